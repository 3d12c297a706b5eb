package bootstrapper

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
	"github.com/constellation-dev/constellation/internal/joinservice"
)

func TestWritePKI(t *testing.T) {
	var files []*initpb.PKIFile
	for _, name := range joinservice.ControlPlaneFiles {
		files = append(files, &initpb.PKIFile{Name: name, Content: []byte(name)})
	}
	dir := t.TempDir()
	if err := writePKI(dir, files); err != nil {
		t.Fatal(err)
	}
	for _, name := range joinservice.ControlPlaneFiles {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if want := os.FileMode(0o644); strings.HasSuffix(name, ".key") && fi.Mode().Perm() != 0o600 || !strings.HasSuffix(name, ".key") && fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v", name, fi.Mode().Perm())
		}
	}
	for name, bad := range map[string][]*initpb.PKIFile{
		"missing file":   files[1:],
		"escaping path":  append(append([]*initpb.PKIFile{}, files[1:]...), &initpb.PKIFile{Name: "../../etc/passwd"}),
		"duplicate file": append(append([]*initpb.PKIFile{}, files[1:]...), files[1]),
	} {
		if err := writePKI(t.TempDir(), bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
