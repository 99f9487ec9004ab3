// Command notifications runs the notifications service.
package main

import (
	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/services/notifications/internal/notifications"
)

func main() { service.Main(notifications.Spec()) }
