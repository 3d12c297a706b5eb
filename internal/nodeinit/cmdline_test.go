package nodeinit

import (
	"strings"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	r := Root{Partition: "constellation-root", DataBlocks: 398, HashStart: 400}
	r.RootHash[0], r.Salt[31] = 0xab, 0xcd
	cmdline := "console=ttyS0 quiet " + r.Param() + " -- /usr/bin/bootstrapper constellation.root=other"
	got, err := ParseCmdline(cmdline)
	if err != nil {
		t.Fatal(err)
	}
	if got != r {
		t.Fatalf("parsed %+v, want %+v", got, r)
	}
	hash := strings.Repeat("ab", 32)
	for name, bad := range map[string]string{
		"no root":         "quiet",
		"twice":           r.Param() + " " + r.Param(),
		"bad partition":   "constellation.root=../sda constellation.verity=1,1," + hash + "," + hash,
		"short hash":      "constellation.root=r constellation.verity=1,1,abcd," + hash,
		"upper-case hash": "constellation.root=r constellation.verity=1,1," + strings.ToUpper(hash) + "," + hash,
		"hash in data":    "constellation.root=r constellation.verity=10,5," + hash + "," + hash,
		"zero blocks":     "constellation.root=r constellation.verity=0,0," + hash + "," + hash,
		"fields":          "constellation.root=r constellation.verity=1,1," + hash,
		"after --":        "quiet -- " + r.Param(),
		"too long":        r.Param() + " " + strings.Repeat("x", MaxCmdline),
	} {
		if _, err := ParseCmdline(bad); err == nil {
			t.Errorf("%s: accepted %q", name, bad)
		}
	}
}

func FuzzParseCmdline(f *testing.F) {
	r := Root{Partition: "constellation-root", DataBlocks: 1, HashStart: 1}
	f.Add("console=ttyS0 " + r.Param() + " -- /usr/bin/first")
	f.Add("constellation.root=a constellation.verity=1,2,00,00")
	f.Fuzz(func(t *testing.T, cmdline string) {
		r, err := ParseCmdline(cmdline)
		if err != nil {
			return
		}
		again, err := ParseCmdline(r.Param())
		if err != nil || again != r {
			t.Fatalf("%q parsed as %+v, which does not round-trip: %+v, %v", cmdline, r, again, err)
		}
	})
}
