package houserules

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestEveryFuzzTargetRuns checks that the list `make test` fuzzes (scripts/fuzz-targets.sh) holds every fuzz
// target of the code, found here by parsing the test files, so that no parser of untrusted bytes goes unfuzzed
// because its target was left out of a list.
func TestEveryFuzzTargetRuns(t *testing.T) {
	root := "../.."
	var want []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "build") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		af, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		for _, decl := range af.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Recv != nil || !strings.HasPrefix(fn.Name.Name, "Fuzz") || len(fn.Type.Params.List) != 1 {
				continue
			}
			if star, ok := fn.Type.Params.List[0].Type.(*ast.StarExpr); ok {
				if sel, ok := star.X.(*ast.SelectorExpr); ok && sel.Sel.Name == "F" {
					rel, _ := filepath.Rel(root, filepath.Dir(path))
					want = append(want, "./"+rel+":"+fn.Name.Name)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(want) < 10 {
		t.Fatalf("found only %d fuzz targets", len(want))
	}
	out, err := exec.Command("bash", filepath.Join(root, "scripts/fuzz-targets.sh")).Output()
	if err != nil {
		t.Fatalf("scripts/fuzz-targets.sh: %v", err)
	}
	got := strings.Fields(string(out))
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("fuzz target %s is not in the list make test runs (scripts/fuzz-targets.sh)", w)
		}
	}
	for _, g := range got {
		if !slices.Contains(want, g) {
			t.Errorf("scripts/fuzz-targets.sh lists %s, which is not a fuzz target of the code", g)
		}
	}
	// SECURITY.md names every fuzz target with what it feeds: a reviewer sees which untrusted input is fuzzed.
	security, err := os.ReadFile(filepath.Join(root, "SECURITY.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		pkg, name, _ := strings.Cut(strings.TrimPrefix(w, "./"), ":")
		if !strings.Contains(string(security), "`"+pkg+":") || !strings.Contains(string(security), name+"`") {
			t.Errorf("SECURITY.md does not list the fuzz target %s (package %s) in its table of fuzz targets", name, pkg)
		}
	}
}
