package policyupdate

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

var (
	key       = bytes.Repeat([]byte{0x5a}, 32)
	clusterID = bytes.Repeat([]byte{0x1c}, 32)
)

// image is the measurement set of a node image: PCR 0, 4 and 8, the image's digest filled with b.
func image(b byte) measurements.M {
	return measurements.M{
		0:                          {Expected: measurements.Digest(bytes.Repeat([]byte{0x0f}, 32))},
		measurements.PCRNodeImage:  {Expected: measurements.Digest(bytes.Repeat([]byte{b}, 32))},
		measurements.PCRBootParams: {Expected: measurements.Digest(bytes.Repeat([]byte{0x88}, 32))},
	}
}

// digestOf is the digest of the node image a set of image(b) is of: sha256: and its PCR 4 value.
func digestOf(set measurements.M) string {
	return "sha256:" + set[measurements.PCRNodeImage].Expected.String()
}

// labelled names each set's node image ([digestOf]).
func labelled(sets ...measurements.M) []ImageSet {
	var out []ImageSet
	for _, set := range sets {
		out = append(out, ImageSet{Image: digestOf(set), Measurements: set})
	}
	return out
}

func author(t *testing.T, epoch uint64, sets ...measurements.M) *Update {
	t.Helper()
	u, err := Author(key, clusterID, epoch, labelled(sets...)...)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// authorV1 makes an update of wire version 1, whose sets name no image, as the CLI authored them before.
func authorV1(t *testing.T, epoch uint64, sets ...measurements.M) *Update {
	t.Helper()
	u := &Update{Epoch: epoch, ClusterID: clusterID, Sets: sets}
	if err := u.validate(); err != nil {
		t.Fatal(err)
	}
	u.MAC = u.mac(key)
	return u
}

func marshal(t *testing.T, u *Update) []byte {
	t.Helper()
	raw, err := u.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestRoundTrip(t *testing.T) {
	u := author(t, 7, image(1), image(2))
	got, err := Open(marshal(t, u), key, clusterID)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Same(u) || got.Epoch != 7 || len(got.Sets) != 2 || got.ImageOf(0) != digestOf(image(1)) || got.ImageOf(1) != digestOf(image(2)) {
		t.Fatalf("round trip: %v, want %v", got, u)
	}
	if !strings.Contains(string(marshal(t, u)), `"images":["sha256:0101`) {
		t.Fatalf("the wire form does not name the images: %s", marshal(t, u))
	}
	if !strings.Contains(u.String(), "epoch 7") {
		t.Fatalf("String: %s", u)
	}
}

// An update with a MAC under another key, with edited sets or epoch, for another cluster, with three sets or
// with a set that accepts any image is refused.
func TestRefusesForgedAndInvalidUpdates(t *testing.T) {
	valid := marshal(t, author(t, 3, image(1), image(2)))
	edit := func(fn func(w map[string]any)) []byte {
		var w map[string]any
		if err := json.Unmarshal(valid, &w); err != nil {
			t.Fatal(err)
		}
		fn(w)
		raw, _ := json.Marshal(w)
		return raw
	}
	other, _ := Author(bytes.Repeat([]byte{0xad}, 32), clusterID, 3, labelled(image(1), image(2))...)
	otherCluster, _ := Author(key, bytes.Repeat([]byte{2}, 32), 3, labelled(image(1), image(2))...)
	anyImage := image(3)
	delete(anyImage, measurements.PCRNodeImage)
	warnOnly := image(3)
	warnOnly[measurements.PCRBootParams] = measurements.Measurement{Expected: warnOnly[measurements.PCRBootParams].Expected, WarnOnly: true}
	withPCR15 := image(3)
	withPCR15[measurements.PCRClusterID] = measurements.Measurement{}
	setJSON := func(m measurements.M) any {
		raw, _ := json.Marshal(m)
		var v any
		json.Unmarshal(raw, &v)
		return v
	}
	for name, tc := range map[string]struct {
		raw  []byte
		want error
	}{
		"MAC under another key": {marshal(t, other), ErrNotAuthentic},
		"another cluster":       {marshal(t, otherCluster), nil},
		"edited set":            {edit(func(w map[string]any) { w["sets"].([]any)[1] = setJSON(image(9)) }), ErrNotAuthentic},
		"edited epoch":          {edit(func(w map[string]any) { w["epoch"] = 4 }), ErrNotAuthentic},
		"dropped set": {edit(func(w map[string]any) {
			w["sets"], w["images"] = w["sets"].([]any)[:1], w["images"].([]any)[:1]
		}), ErrNotAuthentic},
		// The image a set names decides which image a node that matches it is recorded to run.
		"edited image": {edit(func(w map[string]any) {
			w["images"].([]any)[0] = digestOf(image(2))[:10] + "9" + digestOf(image(2))[11:]
		}), ErrNotAuthentic},
		"swapped images": {edit(func(w map[string]any) { im := w["images"].([]any); im[0], im[1] = im[1], im[0] }), ErrNotAuthentic},
		"old image named as the new one": {edit(func(w map[string]any) {
			w["images"].([]any)[0] = "sha256:" + strings.Repeat("0a", 32)
		}), ErrNotAuthentic},
		"images dropped, as version 1": {edit(func(w map[string]any) { delete(w, "images"); w["version"] = 1 }), ErrNotAuthentic},
		"images dropped":               {edit(func(w map[string]any) { delete(w, "images") }), nil},
		"one image for two sets":       {edit(func(w map[string]any) { w["images"] = w["images"].([]any)[:1] }), nil},
		"both sets one image":          {edit(func(w map[string]any) { w["images"].([]any)[1] = w["images"].([]any)[0] }), nil},
		"empty image":                  {edit(func(w map[string]any) { w["images"].([]any)[1] = "" }), nil},
		"upper-case image":             {edit(func(w map[string]any) { w["images"].([]any)[1] = strings.ToUpper(digestOf(image(2))) }), nil},
		"image without algorithm":      {edit(func(w map[string]any) { w["images"].([]any)[1] = digestOf(image(2))[7:] }), nil},
		"images in version 1":          {edit(func(w map[string]any) { w["version"] = 1 }), nil},
		"three sets":                   {edit(func(w map[string]any) { w["sets"] = append(w["sets"].([]any), setJSON(image(9))) }), nil},
		"accept-any-image set":         {edit(func(w map[string]any) { w["sets"].([]any)[1] = setJSON(anyImage) }), measurements.ErrAcceptsAnyImage},
		"warn-only boot PCR":           {edit(func(w map[string]any) { w["sets"].([]any)[1] = setJSON(warnOnly) }), measurements.ErrAcceptsAnyImage},
		"cluster-ID PCR":               {edit(func(w map[string]any) { w["sets"].([]any)[1] = setJSON(withPCR15) }), nil},
		"no sets":                      {edit(func(w map[string]any) { w["sets"] = []any{} }), nil},
		"epoch 0":                      {edit(func(w map[string]any) { w["epoch"] = 0 }), nil},
		"negative epoch":               {edit(func(w map[string]any) { w["epoch"] = -1 }), nil},
		"unknown field":                {edit(func(w map[string]any) { w["acceptAll"] = true }), nil},
		"other version":                {edit(func(w map[string]any) { w["version"] = 3 }), nil},
		"upper-case MAC":               {edit(func(w map[string]any) { w["mac"] = strings.ToUpper(w["mac"].(string)) }), nil},
		"duplicate key":                {[]byte(strings.Replace(string(valid), `"epoch":3`, `"epoch":3,"epoch":9`, 1)), nil},
		"trailing data":                {append(bytes.Clone(valid), `{}`...), nil},
		"too large":                    {append(bytes.Clone(valid), bytes.Repeat([]byte(" "), MaxSize)...), nil},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Open(tc.raw, key, clusterID)
			if err == nil {
				t.Fatal("accepted")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("%v, want %v", err, tc.want)
			}
		})
	}
	if _, err := Open(valid, key, clusterID); err != nil {
		t.Fatalf("the valid update: %v", err)
	}
	// The author refuses what the reader refuses.
	for name, sets := range map[string][]ImageSet{
		"three sets": labelled(image(1), image(2), image(3)), "accept any image": labelled(anyImage), "cluster-ID PCR": labelled(withPCR15),
		"the same set twice": labelled(image(1), image(1)), "none": nil,
		"no image":            {{Measurements: image(1)}},
		"two sets, one image": {{Image: digestOf(image(1)), Measurements: image(1)}, {Image: digestOf(image(1)), Measurements: image(2)}},
		"not a digest":        {{Image: "latest", Measurements: image(1)}},
	} {
		if _, err := Author(key, clusterID, 1, sets...); err == nil {
			t.Errorf("Author with %s: accepted", name)
		}
	}
	for name, bad := range tpmtest.AcceptAnyImage(image(1)) {
		if _, err := Author(key, clusterID, 1, ImageSet{Image: digestOf(image(1)), Measurements: bad}); !errors.Is(err, measurements.ErrAcceptsAnyImage) {
			t.Errorf("Author with %s: %v", name, err)
		}
	}
}

// An update of wire version 1, which a key service kept before sets named their images, still reads and
// verifies; its sets name no image, and it stays version 1 on the wire. Version 1 content under a version 2 MAC
// (the images dropped), or the reverse, does not verify.
func TestReadsVersion1(t *testing.T) {
	v1 := authorV1(t, 4, image(1), image(2))
	raw := marshal(t, v1)
	if !strings.Contains(string(raw), `"version":1`) || strings.Contains(string(raw), "images") {
		t.Fatalf("version 1 wire form: %s", raw)
	}
	got, err := Open(raw, key, clusterID)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Same(v1) || got.Images != nil || got.ImageOf(0) != "" || got.ImageOf(1) != "" {
		t.Fatalf("read %v (images %q)", got, got.Images)
	}
	if again := marshal(t, got); !bytes.Equal(again, raw) {
		t.Fatalf("a version 1 update is written back otherwise:\n%s\n%s", raw, again)
	}
	v2 := author(t, 4, image(1), image(2))
	if v2.Same(v1) {
		t.Fatal("an update whose sets name images is the same as one whose sets name none")
	}
	if _, err := Supersedes(v1, v2); !errors.Is(err, ErrConflict) {
		t.Fatalf("version 2 at the epoch of a version 1 in force: %v", err)
	}
	// The version 2 MAC with the images stripped, and the version 1 MAC with images added.
	stripped := *v2
	stripped.Images = nil
	if _, err := Open(marshal(t, &stripped), key, clusterID); !errors.Is(err, ErrNotAuthentic) {
		t.Fatalf("version 2 MAC on version 1 content: %v", err)
	}
	added := *v1
	added.Images = slices.Clone(v2.Images)
	if _, err := Open(marshal(t, &added), key, clusterID); !errors.Is(err, ErrNotAuthentic) {
		t.Fatalf("version 1 MAC with images: %v", err)
	}
}

func TestSupersedes(t *testing.T) {
	two := author(t, 5, image(1), image(2))
	narrowed := author(t, 6, image(2))
	for name, tc := range []struct {
		current, next *Update
		take          bool
		err           error
	}{
		{nil, two, true, nil},
		{two, narrowed, true, nil},
		{narrowed, narrowed, false, nil},
		{narrowed, two, false, ErrStale},
		{narrowed, author(t, 6, image(1), image(2)), false, ErrConflict},
	} {
		take, err := Supersedes(tc.current, tc.next)
		if take != tc.take || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
			t.Errorf("case %d: %v, %v; want %v, %v", name, take, err, tc.take, tc.err)
		}
	}
}

// FuzzParse: the wire form of a measurement policy update, which anyone who reaches a key service may send.
func FuzzParse(f *testing.F) {
	u, _ := Author(key, clusterID, 2, labelled(image(1), image(2))...)
	raw, _ := u.Marshal()
	f.Add(raw)
	one, _ := Author(key, clusterID, 3, labelled(image(2))...)
	raw1, _ := one.Marshal()
	f.Add(raw1)
	v1 := &Update{Epoch: 2, ClusterID: clusterID, Sets: []measurements.M{image(1), image(2)}}
	v1.MAC = v1.mac(key)
	raw2, _ := v1.Marshal()
	f.Add(raw2)
	f.Add([]byte(`{"version":1,"clusterID":"","epoch":1,"sets":[],"mac":""}`))
	f.Add([]byte(`{"version":2,"clusterID":"","epoch":1,"sets":[],"images":[],"mac":""}`))
	f.Add([]byte(`{"version":2,"clusterID":"","epoch":1,"sets":[{}],"images":["sha256:"],"mac":""}`))
	f.Add([]byte(`{"version":1,"epoch":18446744073709551615}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := Parse(data)
		if err != nil {
			return
		}
		// What parses is valid content, and its wire form reads back as the same update.
		if len(u.Sets) == 0 || len(u.Sets) > MaxSets || u.Epoch == 0 || (u.Images != nil && len(u.Images) != len(u.Sets)) {
			t.Fatalf("parsed an invalid update: %+v", u)
		}
		for _, img := range u.Images {
			if CheckImageDigest(img) != nil {
				t.Fatalf("parsed an update with image %q", img)
			}
		}
		again, err := u.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse(again)
		if err != nil || !back.Same(u) || !bytes.Equal(back.MAC, u.MAC) || !slices.Equal(back.Images, u.Images) {
			t.Fatalf("the wire form does not read back: %v", err)
		}
		if u.Verify(key, clusterID) == nil && !bytes.Equal(u.MAC, u.mac(key)) {
			t.Fatal("verified with another MAC")
		}
	})
}
