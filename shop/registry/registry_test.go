package registry

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// root is the repository's root, from this package's directory.
const root = "../.."

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, path))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The services' modules and go.work hold exactly the registered services,
// so that a service added to the registry and forgotten elsewhere (or the
// reverse) fails here with the file to fix. The Makefile and the Dockerfile
// take the list from the directories; deploy's tests check the chart and
// skaffold against the same directories.
func TestEverythingListsEveryService(t *testing.T) {
	t.Parallel()
	want := Names()

	// Directories with a command of their own name are services; other
	// modules under services/ (the shared rules) are not.
	dirs, err := filepath.Glob(filepath.Join(root, "services", "*", "cmd", "*", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	var commands []string
	for _, d := range dirs {
		rel, _ := filepath.Rel(filepath.Join(root, "services"), d)
		parts := strings.Split(filepath.ToSlash(rel), "/")
		if parts[0] == parts[2] {
			commands = append(commands, parts[0])
		}
	}

	var work []string
	for _, m := range regexp.MustCompile(`(?m)^\s*\./services/(\S+)\s*$`).FindAllStringSubmatch(read(t, "go.work"), -1) {
		if m[1] != "rules" {
			work = append(work, m[1])
		}
	}
	sorted := func(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }
	for _, c := range []struct {
		where string
		names []string
	}{
		{"services/<name>/cmd/<name>/main.go", commands},
		{"go.work use ./services/<name>", work},
	} {
		if got, exp := sorted(c.names), sorted(want); !slices.Equal(got, exp) {
			t.Errorf("%s lists %v, the registry %v", c.where, got, exp)
		}
	}
}

func TestServicesAreDistinct(t *testing.T) {
	t.Parallel()
	names, ports, apis := map[string]bool{}, map[int]bool{}, map[string]bool{}
	for _, s := range Services {
		if names[s.Name] || ports[s.Port] || apis[s.API] {
			t.Errorf("%s: name, port or API shared with another service", s.Name)
		}
		names[s.Name], ports[s.Port], apis[s.API] = true, true, true
		if s.API == "" || s.Port == 0 {
			t.Errorf("%s: no API or port", s.Name)
		}
		if got, ok := Lookup(s.Name); !ok || got.Name != s.Name {
			t.Errorf("Lookup(%q) = %v, %v", s.Name, got, ok)
		}
	}
	if _, ok := Lookup("nonesuch"); ok {
		t.Error("Lookup found a service that is not registered")
	}
}
