// Command shop runs the whole shop locally (`make run`): PostgreSQL, a
// Kafka-protocol broker and redis-server with their data in .switchyard/,
// and the six services on their ports. Ctrl-C stops everything cleanly; the
// next run finds all data again.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/switchyard/switchyard/shop/stack"
)

func main() {
	dir := flag.String("dir", ".switchyard", "where PostgreSQL and the broker keep their data")
	bin := flag.String("bin", ".bin", "where the service binaries are")
	pgPort := flag.Int("postgres-port", 55432, "PostgreSQL port on 127.0.0.1")
	kafkaPort := flag.Int("kafka-port", 19092, "Kafka broker port on 127.0.0.1")
	redisPort := flag.Int("redis-port", 16379, "redis-server port on 127.0.0.1")
	transport := flag.String("transport", "kafka", "what carries events between the services: kafka or redis")
	analytics := flag.Int("analytics-instances", 1, "analytics processes sharing its consumer group (the first on 50056, the k-th on 50056+(k-1)*100)")
	flag.Parse()
	if *analytics < 1 {
		fmt.Fprintln(os.Stderr, "switchyard: -analytics-instances (ANALYTICS_INSTANCES=) is at least 1")
		os.Exit(2)
	}
	if *transport != "kafka" && *transport != "redis" {
		fmt.Fprintf(os.Stderr, "switchyard: -transport (TRANSPORT=) is kafka or redis, not %q\n", *transport)
		os.Exit(2)
	}
	if err := run(*dir, *bin, *transport, *pgPort, *kafkaPort, *redisPort, *analytics); err != nil {
		fmt.Fprintln(os.Stderr, "switchyard:", err)
		os.Exit(1)
	}
}

func run(dir, bin, transport string, pgPort, kafkaPort, redisPort, analytics int) error {
	dir, _ = filepath.Abs(dir)
	bin, _ = filepath.Abs(bin)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Printf("switchyard: starting PostgreSQL (127.0.0.1:%d), the broker (127.0.0.1:%d), redis-server (127.0.0.1:%d) and six services on %s; data in %s\n",
		pgPort, kafkaPort, redisPort, transport, dir)
	s, err := stack.Start(ctx, stack.Options{
		Dir: dir, BinDir: bin, PostgresPort: pgPort, KafkaPort: kafkaPort, RedisPort: redisPort,
		Transport: transport, Durable: true, Log: os.Stdout, Instances: map[string]int{"analytics": analytics},
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	fmt.Print(banner(s, pgPort, kafkaPort, redisPort))
	<-ctx.Done()
	fmt.Println("\nswitchyard: stopping services, broker, redis-server and PostgreSQL ...")
	if err := s.Close(); err != nil {
		return err
	}
	fmt.Println("switchyard: stopped; `make run` again finds all data in", dir)
	return nil
}

func banner(s *stack.Stack, pgPort, kafkaPort, redisPort int) string {
	return fmt.Sprintf(`
================================================================================
 Switchyard is running. Ctrl-C stops it.

 gRPC (reflection on, health on):
%s
 PostgreSQL: psql postgres://postgres@127.0.0.1:%d/orders   (one database per service)
 Kafka:      127.0.0.1:%d   (topics switchyard.customer, .order, .inventory, .payment)
 Redis:      redis-cli -p %d   (events travel over %s; with redis: XRANGE switchyard.order:0 - +)

 Try it (grpcurl: 'make grpcurl' builds it into .bin/; export PATH="$PWD/.bin:$PATH"):

  grpcurl -plaintext -d '{"email":"ada@example.com","name":"Ada"}' localhost:50051 switchyard.customers.v1.CustomerService/RegisterCustomer
  grpcurl -plaintext -d '{"sku":"BOOK-1","name":"A book","price":{"currency":"USD","amount_minor":1500},"stock":10}' localhost:50053 switchyard.inventory.v1.InventoryService/CreateProduct
  grpcurl -plaintext -d '{"customer_id":"<customerId>","amount":{"currency":"USD","amount_minor":5000},"idempotency_key":"first-top-up"}' localhost:50054 switchyard.payments.v1.PaymentService/TopUp
  grpcurl -plaintext -d '{"customer_id":"<customerId>","items":[{"sku":"BOOK-1","quantity":2}],"idempotency_key":"first-order"}' localhost:50052 switchyard.orders.v1.OrderService/CreateOrder
  grpcurl -plaintext -d '{"order_id":"<orderId>"}' localhost:50052 switchyard.orders.v1.OrderService/WatchOrder
  grpcurl -plaintext -d '{"customer_id":"<customerId>"}' localhost:50055 switchyard.notifications.v1.NotificationService/ListNotifications
  grpcurl -plaintext localhost:50056 switchyard.analytics.v1.AnalyticsService/GetSalesReport

 The full walkthrough, with the ids filled in for you, is in README.md.
================================================================================
`, s.GrpcurlLines(), pgPort, kafkaPort, redisPort, s.Transport())
}
