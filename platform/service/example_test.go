package service_test

import (
	"testing/fstest"

	"github.com/switchyard/switchyard/platform/service"
)

// migrations stands for a service's embedded *.sql files.
var migrations = fstest.MapFS{"001_accounts.sql": {Data: []byte("CREATE TABLE accounts (id uuid PRIMARY KEY)")}}

// setup stands for a service's Setup: it registers the gRPC services on
// env.Server and the event handlers on env.Consumer.
func setup(env *service.Env) error { return nil }

// runPayments is the package doc's example, compiled (service_test.go runs
// services; Main itself exits the process).
func runPayments() {
	service.Main(service.Spec{
		Name:       "payments",
		Port:       50054,
		Migrations: migrations, // an fs.FS of *.sql files
		Emits:      true,       // it writes events, so it gets an outbox relay
		Setup:      setup,      // registers the gRPC services and event handlers on the Env
	})
}

var _ = runPayments
