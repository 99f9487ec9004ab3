package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/shop/registry"
	"github.com/switchyard/switchyard/shop/stack"
)

// The README's walkthrough, run verbatim with bash against a fresh stack,
// shows what it promises. The stack gets free ports (fixed ones can be
// taken by any client socket of a parallel test), and the script's
// localhost:<port> addresses are mapped to them.
func TestREADMEWalkthrough(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	start := strings.Index(text, "<!-- walkthrough:start -->")
	end := strings.Index(text, "<!-- walkthrough:end -->")
	if start < 0 || end < start {
		t.Fatal("README.md has no walkthrough markers")
	}
	var script strings.Builder
	for _, block := range strings.Split(text[start:end], "```sh\n")[1:] {
		body, _, ok := strings.Cut(block, "```")
		if !ok {
			t.Fatal("unterminated code block in the walkthrough")
		}
		script.WriteString(body)
	}

	// grpcurl, pinned in tools/go.mod.
	build := exec.Command("go", "build", "-o", filepath.Join(binDir, "grpcurl"), "github.com/fullstorydev/grpcurl/cmd/grpcurl")
	build.Dir = "../../tools"
	build.Env = append(os.Environ(), "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build grpcurl: %v\n%s", err, out)
	}

	logs := &syncBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, stack.Options{Dir: filepath.Join(t.TempDir(), "data"), BinDir: binDir, Log: logs,
		RandomPorts: true, Transport: e2eTransport()})
	if err != nil {
		t.Fatalf("start the shop: %v\n%s", err, logs.tail(40))
	}
	defer st.Close()
	text = script.String()
	for _, svc := range registry.Services {
		addr := fmt.Sprintf("localhost:%d", svc.Port)
		if !strings.Contains(text, addr) {
			t.Fatalf("the walkthrough never calls %s on %s", svc.Name, addr)
		}
		text = strings.ReplaceAll(text, addr, st.Addr(svc.Name))
	}

	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", text)
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "PATH="+binDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("walkthrough failed: %v\n%s\nservice logs:\n%s", err, out, logs.tail(60))
	}
	// (PENDING is not required: a fast saga can finish before the watch starts.)
	for _, want := range []string{
		`"status": "ORDER_STATUS_CONFIRMED"`,
		`"kind": "WELCOME"`,
		`"kind": "ORDER_CONFIRMED"`,
		`"status": "ORDER_STATUS_CANCELLED"`,
		`"failureReason": "INSUFFICIENT_FUNDS"`,
		`"available": "8"`,
		`"amountMinor": "2000"`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("walkthrough output lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("walkthrough output:\n%s", out)
	}
}
