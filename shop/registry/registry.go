// Package registry is the one list of the shop's services. The test kit
// (shop/stack), the invariant checker, the soak and the end-to-end tests
// read it; the Makefile, go.work, the Dockerfile, skaffold and the Helm
// chart are checked against it by tests (this package's and deploy's), so
// a service added here and forgotten anywhere else fails `make test`.
// README.md, "Adding a service", lists the steps.
package registry

import (
	analyticsv1 "github.com/switchyard/switchyard/gen/go/switchyard/analytics/v1"
	customersv1 "github.com/switchyard/switchyard/gen/go/switchyard/customers/v1"
	inventoryv1 "github.com/switchyard/switchyard/gen/go/switchyard/inventory/v1"
	notificationsv1 "github.com/switchyard/switchyard/gen/go/switchyard/notifications/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	paymentsv1 "github.com/switchyard/switchyard/gen/go/switchyard/payments/v1"
)

// Service is one of the shop's services.
type Service struct {
	// Name is everything's name: the module under services/, its binary
	// and cmd/ directory, its database and role, its consumer group, its
	// image (switchyard-<name>) and its key in the chart's values.
	Name string
	// Port is its documented local gRPC port; its metrics are served 1000
	// above it.
	Port int
	// API is the gRPC service it serves. Its health entry says when the
	// service is ready, and only this service has it: another process
	// that took the port first answers NOT_FOUND for it, not SERVING.
	API string
	// Consumes lists the topics its consumer group reads (with the default
	// topic prefix); none for a service that only emits.
	Consumes []string
	// Emits says it writes events (service.Spec.Emits): only then does it
	// have an outbox and a relay.
	Emits bool
}

// Services lists the shop's services in start order.
var Services = []Service{
	{Name: "customers", Port: 50051, API: customersv1.CustomerService_ServiceDesc.ServiceName, Emits: true},
	{Name: "orders", Port: 50052, API: ordersv1.OrderService_ServiceDesc.ServiceName, Emits: true,
		Consumes: []string{"switchyard.inventory", "switchyard.payment"}},
	{Name: "inventory", Port: 50053, API: inventoryv1.InventoryService_ServiceDesc.ServiceName, Emits: true,
		Consumes: []string{"switchyard.order"}},
	{Name: "payments", Port: 50054, API: paymentsv1.PaymentService_ServiceDesc.ServiceName, Emits: true,
		Consumes: []string{"switchyard.customer", "switchyard.order"}},
	{Name: "notifications", Port: 50055, API: notificationsv1.NotificationService_ServiceDesc.ServiceName,
		Consumes: []string{"switchyard.customer", "switchyard.order"}},
	{Name: "analytics", Port: 50056, API: analyticsv1.AnalyticsService_ServiceDesc.ServiceName,
		Consumes: []string{"switchyard.customer", "switchyard.order"}},
}

// Names returns the services' names in start order.
func Names() []string {
	names := make([]string, len(Services))
	for i, s := range Services {
		names[i] = s.Name
	}
	return names
}

// Lookup returns the service with that name.
func Lookup(name string) (Service, bool) {
	for _, s := range Services {
		if s.Name == name {
			return s, true
		}
	}
	return Service{}, false
}
