// Command soak runs the chaos soak (`make soak`, package soak): the whole
// shop on free ports with its data in a temporary directory, load and
// faults for -duration, then every invariant. Its last line is
//
//	soak: N orders, N faults, N violations
//
// whatever happens. It exits non-zero on any violation, when the shop did
// not recover and when interrupted; the temporary directory is kept after a
// failure (its path is printed) and removed otherwise.
// `soak broker -port N -dir D [-sync]` is the broker process it kills and
// restarts.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
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
	var o options
	flag.DurationVar(&o.duration, "duration", 5*time.Minute, "how long to run load and inject faults")
	flag.IntVar(&o.rate, "rate", 10, "CreateOrder calls per second")
	flag.Uint64Var(&o.seed, "seed", 0, "seed of the fault schedule (0: random; printed)")
	flag.StringVar(&o.bin, "bin", ".bin", "where the service binaries are (make build)")
	flag.BoolVar(&o.keep, "keep", false, "keep the data directory even when the soak passes")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Stdout, os.Stderr, o)
	stop()
	os.Exit(code)
}

// options are the command's flags.
type options struct {
	duration time.Duration
	rate     int
	seed     uint64
	bin      string
	keep     bool
}

// run soaks the shop and returns the exit code. However it ends, its last
// line on stdout is the summary (scripts read it with tail -1); errors go
// to stderr before it. The temporary directory is kept for a failure to be
// looked into (and with -keep), and removed when the soak passed or was
// interrupted: Ctrl-C must not leave a PostgreSQL cluster behind in /tmp.
func run(ctx context.Context, stdout, stderr io.Writer, o options) int {
	var res soak.Result
	defer func() { fmt.Fprintln(stdout, res.Summary()) }()
	fail := func(code int, err error) int {
		fmt.Fprintln(stderr, "soak:", err)
		return code
	}
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return fail(2, fmt.Errorf("-bin: %w", err))
	}
	self, err := os.Executable()
	if err != nil {
		return fail(2, err)
	}
	dir, err := os.MkdirTemp("", "switchyard-soak-")
	if err != nil {
		return fail(2, err)
	}
	keepDir := o.keep
	defer func() {
		if !keepDir {
			_ = os.RemoveAll(dir)
		}
	}()
	logPath := filepath.Join(dir, "soak.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return fail(2, err)
	}
	defer logFile.Close()
	fmt.Fprintf(stdout, "soak: starting the shop (data and logs in %s)\n", dir)
	s, err := stack.Start(ctx, stack.Options{
		Dir: dir, BinDir: bin, RandomPorts: true, Log: logFile,
		BrokerCommand: []string{self, "broker"},
		// A service stopped for a group rewind need not wait 20 s for
		// in-flight RPCs.
		Env: []string{"SWITCHYARD_SHUTDOWN_TIMEOUT=5s"},
	})
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(stdout, "soak: interrupted while starting the shop")
			return 1
		}
		keepDir = true
		fmt.Fprintf(stdout, "soak: the shop did not start; logs in %s\n", logPath)
		return fail(2, err)
	}
	res, err = soak.Run(ctx, s, soak.Options{Duration: o.duration, Rate: o.rate, Seed: o.seed, Log: stdout})
	if cerr := s.Close(); cerr != nil && err == nil {
		err = cerr
	}
	for _, l := range res.Latency {
		fmt.Fprintln(stdout, "soak: latency", l)
	}
	for _, v := range res.Violations {
		fmt.Fprintln(stdout, "soak: violation:", v)
	}
	switch {
	case len(res.Violations) > 0 || (err != nil && ctx.Err() == nil):
		keepDir = true
		fmt.Fprintf(stdout, "soak: seed %d; logs in %s\n", res.Seed, logPath)
		if err != nil {
			return fail(1, err)
		}
		return 1
	case ctx.Err() != nil:
		fmt.Fprintf(stdout, "soak: interrupted; seed %d\n", res.Seed)
		return 1
	}
	return 0
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
