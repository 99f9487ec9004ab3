// Command analytics runs the analytics service: scores and read models
// built from the shop's events, off the order's critical path.
package main

import (
	"fmt"
	"os"

	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/services/analytics/internal/analytics"
)

func main() {
	opts, err := analytics.OptionsFromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "analytics: configuration:", err)
		os.Exit(2)
	}
	service.Main(analytics.Spec(opts))
}
