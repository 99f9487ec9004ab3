// Command customers runs the customers service.
package main

import (
	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/services/customers/internal/customers"
)

func main() { service.Main(customers.Spec()) }
