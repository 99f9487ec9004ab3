// Command inventory runs the inventory service.
package main

import (
	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/services/inventory/internal/inventory"
)

func main() { service.Main(inventory.Spec()) }
