// Command soak runs the chaos soak (`make soak`, package soak): the whole
// shop on free ports with its data in a temporary directory, load and
// faults for -duration, then every invariant. Its last line is
//
//	soak: N orders, N faults, N violations
//
// and it exits non-zero on any violation or when the shop did not recover.
// `soak broker -port N -dir D [-sync]` is the broker process it kills and
// restarts.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/switchyard/switchyard/shop/soak"
	"github.com/switchyard/switchyard/shop/stack"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "broker" {
		os.Exit(serveBroker(os.Args[2:]))
	}
	duration := flag.Duration("duration", 5*time.Minute, "how long to run load and inject faults")
	rate := flag.Int("rate", 10, "CreateOrder calls per second")
	seed := flag.Uint64("seed", 0, "seed of the fault schedule (0: random; printed)")
	bin := flag.String("bin", ".bin", "where the service binaries are (make build)")
	keep := flag.Bool("keep", false, "keep the data directory even when the soak passes")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code, err := run(ctx, *duration, *rate, *seed, *bin, *keep)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
	}
	os.Exit(code)
}

func run(ctx context.Context, duration time.Duration, rate int, seed uint64, bin string, keep bool) (int, error) {
	bin, _ = filepath.Abs(bin)
	self, err := os.Executable()
	if err != nil {
		return 2, err
	}
	dir, err := os.MkdirTemp("", "switchyard-soak-")
	if err != nil {
		return 2, err
	}
	logPath := filepath.Join(dir, "soak.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return 2, err
	}
	defer logFile.Close()
	fmt.Printf("soak: starting the shop (data and logs in %s)\n", dir)
	s, err := stack.Start(ctx, stack.Options{
		Dir: dir, BinDir: bin, RandomPorts: true, Log: logFile,
		BrokerCommand: []string{self, "broker"},
		// A service stopped for a group rewind need not wait 20 s for
		// in-flight RPCs.
		Env: []string{"SWITCHYARD_SHUTDOWN_TIMEOUT=5s"},
	})
	if err != nil {
		return 2, fmt.Errorf("%w (logs: %s)", err, logPath)
	}
	res, err := soak.Run(ctx, s, soak.Options{Duration: duration, Rate: rate, Seed: seed, Log: os.Stdout})
	if cerr := s.Close(); cerr != nil && err == nil {
		err = cerr
	}
	for _, l := range res.Latency {
		fmt.Println("soak: latency", l)
	}
	for _, v := range res.Violations {
		fmt.Println("soak: violation:", v)
	}
	fmt.Println(res.Summary())
	switch {
	case err != nil:
		fmt.Printf("soak: seed %d; logs in %s\n", res.Seed, logPath)
		return 1, err
	case len(res.Violations) > 0:
		fmt.Printf("soak: seed %d; logs in %s\n", res.Seed, logPath)
		return 1, nil
	}
	if !keep {
		os.RemoveAll(dir)
	}
	return 0, nil
}

// serveBroker is the broker process: it runs until SIGTERM (or SIGKILL).
func serveBroker(args []string) int {
	fs := flag.NewFlagSet("broker", flag.ExitOnError)
	port := fs.Int("port", 0, "port on 127.0.0.1")
	dir := fs.String("dir", "", "the broker's data directory")
	sync := fs.Bool("sync", false, "fsync before acknowledging")
	_ = fs.Parse(args)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := stack.ServeBroker(ctx, *port, *dir, *sync); err != nil {
		fmt.Fprintln(os.Stderr, "broker:", err)
		return 1
	}
	return 0
}
