// Package platform_test checks properties of the library as a whole.
package platform_test

import (
	"go/ast"
	"go/doc/comment"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Every exported name in the library has a doc comment (generated code
// aside), and every package has a package comment.
func TestExportedNamesHaveGodoc(t *testing.T) {
	t.Parallel()
	var missing []string
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		files, _, err := goFiles(path)
		if err != nil {
			return err
		}
		fset := token.NewFileSet()
		name, hasPkgDoc := "", false
		for _, file := range files {
			f, err := parser.ParseFile(fset, file, nil, parser.ParseComments)
			if err != nil {
				return err
			}
			name = f.Name.Name
			if f.Doc != nil {
				hasPkgDoc = true
			}
			if ast.IsGenerated(f) {
				continue // protoc-gen-go's names are documented in the .proto
			}
			for _, decl := range f.Decls {
				missing = append(missing, undocumented(fset, decl)...)
			}
		}
		if name != "" && !hasPkgDoc {
			missing = append(missing, "package "+name+" ("+path+")")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range missing {
		t.Errorf("no doc comment: %s", m)
	}
}

func undocumented(fset *token.FileSet, decl ast.Decl) []string {
	var out []string
	switch d := decl.(type) {
	case *ast.FuncDecl:
		if d.Name.IsExported() && d.Doc == nil && (d.Recv == nil || exportedRecv(d.Recv)) {
			out = append(out, fset.Position(d.Pos()).String()+" "+d.Name.Name)
		}
	case *ast.GenDecl:
		for _, spec := range d.Specs {
			switch s := spec.(type) {
			case *ast.TypeSpec:
				if s.Name.IsExported() && s.Doc == nil && d.Doc == nil {
					out = append(out, fset.Position(s.Pos()).String()+" "+s.Name.Name)
				}
				if st, ok := s.Type.(*ast.StructType); ok && s.Name.IsExported() {
					for _, f := range st.Fields.List {
						for _, n := range f.Names {
							if n.IsExported() && f.Doc == nil && f.Comment == nil {
								out = append(out, fset.Position(n.Pos()).String()+" "+s.Name.Name+"."+n.Name)
							}
						}
					}
				}
			case *ast.ValueSpec:
				for _, n := range s.Names {
					// A documented const/var block documents its members.
					if n.IsExported() && s.Doc == nil && s.Comment == nil && d.Doc == nil {
						out = append(out, fset.Position(n.Pos()).String()+" "+n.Name)
					}
				}
			}
		}
	}
	return out
}

func exportedRecv(fl *ast.FieldList) bool {
	t := fl.List[0].Type
	if s, ok := t.(*ast.StarExpr); ok {
		t = s.X
	}
	if ix, ok := t.(*ast.IndexExpr); ok {
		t = ix.X
	}
	id, ok := t.(*ast.Ident)
	return ok && id.IsExported()
}

// Code blocks in package docs that are not Go (shell commands, key
// layouts), by their first line; every other block must be Go.
var notGo = map[string]bool{
	"redis-cli XRANGE switchyard.order:3 - +":                                               true,
	"g:members:<topic>           ZSET of live members, scored by expiry (ms, server clock)": true,
	"message OrderConfirmed {":                                                              true, // protobuf
}

// Every Go code block in a package doc appears, line for line, in a test
// file of the same package, so `go test` compiles it and it cannot drift
// from the API it shows.
func TestPackageDocExamplesCompile(t *testing.T) {
	t.Parallel()
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		files, testFiles, err := goFiles(path)
		if err != nil {
			return err
		}
		var blocks, tests []string
		for _, name := range testFiles {
			b, err := os.ReadFile(name)
			if err != nil {
				return err
			}
			tests = append(tests, string(b))
		}
		for _, name := range files {
			f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ParseComments|parser.PackageClauseOnly)
			if err != nil {
				return err
			}
			if f.Doc != nil {
				blocks = append(blocks, codeBlocks(f.Doc.Text())...)
			}
		}
		for _, block := range blocks {
			first, _, _ := strings.Cut(block, "\n")
			switch {
			case notGo[first]:
			case !parsesAsGo(block):
				t.Errorf("%s: package doc code block %q is not Go: fix it, or add its first line to notGo", path, first)
			case !slices.ContainsFunc(tests, func(src string) bool { return containsLines(src, block) }):
				t.Errorf("%s: package doc code block %q appears in no test file of the package: copy it into an example there", path, first)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// goFiles returns the Go files of dir: the package's, and its tests.
func goFiles(dir string) (files, tests []string, err error) {
	all, err := filepath.Glob(filepath.Join(dir, "*.go"))
	for _, f := range all {
		if strings.HasSuffix(f, "_test.go") {
			tests = append(tests, f)
		} else {
			files = append(files, f)
		}
	}
	return files, tests, err
}

// codeBlocks returns the code blocks of a doc comment's text.
func codeBlocks(text string) []string {
	var out []string
	for _, b := range new(comment.Parser).Parse(text).Content {
		if c, ok := b.(*comment.Code); ok {
			out = append(out, c.Text)
		}
	}
	return out
}

// parsesAsGo reports whether code is a sequence of Go declarations or of
// statements.
func parsesAsGo(code string) bool {
	fset := token.NewFileSet()
	if _, err := parser.ParseFile(fset, "", "package p\n"+code, 0); err == nil {
		return true
	}
	_, err := parser.ParseFile(fset, "", "package p\nfunc _() {\n"+code+"\n}", 0)
	return err == nil
}

// containsLines reports whether the lines of block appear consecutively in
// src, ignoring indentation.
func containsLines(src, block string) bool {
	trim := func(s string) string {
		lines := strings.Split(strings.TrimSpace(s), "\n")
		for i, l := range lines {
			lines[i] = strings.TrimSpace(l)
		}
		return "\n" + strings.Join(lines, "\n") + "\n"
	}
	return strings.Contains(trim(src), trim(block))
}
