package houserules

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestOnePackageComment checks that every package says what it is, once: exactly one file of the package
// (the test files count only for packages made of tests alone) carries the package comment, and it starts
// with "Package <name>" (or "Command <name>" for a main package).
func TestOnePackageComment(t *testing.T) {
	dirs := map[string][]string{}
	root := "../.."
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "build" || name == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(path, ".go") {
			dirs[filepath.Dir(path)] = append(dirs[filepath.Dir(path)], path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) < 20 {
		t.Fatalf("found only %d package directories", len(dirs))
	}
	var problems []string
	for dir, files := range dirs {
		rel, _ := filepath.Rel(root, dir)
		var prod, all []string // files with a package comment
		var name string
		for _, f := range files {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			af, err := parser.ParseFile(token.NewFileSet(), f, src, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Fatal(err)
			}
			isTest := strings.HasSuffix(f, "_test.go")
			if !isTest {
				name = af.Name.Name
			}
			if af.Doc == nil {
				continue
			}
			text := af.Doc.Text()
			want := "Package " + af.Name.Name
			if af.Name.Name == "main" {
				want = "Command "
			}
			if !strings.HasPrefix(text, want) && !isTest {
				problems = append(problems, f+": the package comment starts with "+quoteStart(text)+", want \""+want+" ...\"")
			}
			all = append(all, filepath.Base(f))
			if !isTest {
				prod = append(prod, filepath.Base(f))
			}
		}
		switch {
		case name != "" && len(prod) != 1:
			problems = append(problems, rel+": "+count(prod)+" package comments in its non-test files (want exactly one, usually in doc.go or the file named after the package)")
		case name == "" && len(all) != 1:
			problems = append(problems, rel+": "+count(all)+" package comments in a package of tests alone (want exactly one)")
		}
	}
	sort.Strings(problems)
	for _, p := range problems {
		t.Error(p)
	}
}

func count(files []string) string {
	if len(files) == 0 {
		return "no"
	}
	return strings.Join(files, ", ") + ":"
}

func quoteStart(s string) string {
	if len(s) > 30 {
		s = s[:30]
	}
	return "\"" + s + "...\""
}
