// Command orders runs the orders service and its saga.
package main

import (
	"fmt"
	"os"

	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/services/orders/internal/orders"
)

func main() {
	opts, err := orders.OptionsFromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "orders: configuration:", err)
		os.Exit(2)
	}
	service.Main(orders.Spec(opts))
}
