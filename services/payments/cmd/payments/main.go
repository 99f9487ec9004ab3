// Command payments runs the payments service.
package main

import (
	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/services/payments/internal/payments"
)

func main() { service.Main(payments.Spec()) }
