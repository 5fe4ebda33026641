package audit

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestParseKey(t *testing.T) {
	hex64 := strings.Repeat("ab", KeySize)
	for _, tc := range []struct {
		in      string
		wantErr string
	}{
		{hex64, ""},
		{"  " + hex64 + "\n", ""},
		{hex64 + "cdef", ""},
		{hex64[:62], "62 hex digits, want at least 64"},
		{"", "0 hex digits"},
		{strings.Repeat("zz", KeySize), "hex digits"},
	} {
		k, err := ParseKey([]byte(tc.in))
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("ParseKey(%q): %v", tc.in, err)
		case tc.wantErr == "" && len(k.ID()) != 16:
			t.Errorf("ParseKey(%q): key id %q", tc.in, k.ID())
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("ParseKey(%q): err = %v, want %q", tc.in, err, tc.wantErr)
		}
	}
	a, _ := ParseKey([]byte(hex64))
	b, _ := ParseKey([]byte(" " + hex64 + "\n"))
	c, _ := ParseKey([]byte(strings.Repeat("ac", KeySize)))
	if a.ID() != b.ID() || a.ID() == c.ID() {
		t.Errorf("key ids %s %s %s: want the first two equal, the third different", a.ID(), b.ID(), c.ID())
	}
}

func TestLoadOrCreateKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "audit.key")
	k, created, err := LoadOrCreateKeyFile(path)
	if err != nil || !created {
		t.Fatalf("create: %v, created %v", err, created)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v, want 0600", err, st.Mode())
	}
	if dst, _ := os.Stat(filepath.Dir(path)); dst.Mode().Perm() != 0o700 {
		t.Errorf("new key directory has mode %v, want 0700", dst.Mode().Perm())
	}
	again, created, err := LoadOrCreateKeyFile(path)
	if err != nil || created || again.ID() != k.ID() {
		t.Fatalf("load: %v, created %v, id %s want %s", err, created, again.ID(), k.ID())
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("key directory holds %d entries, want only the key", len(entries))
	}

	// A short key file is refused, not replaced.
	if err := os.WriteFile(path, []byte("abcd\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateKeyFile(path); err == nil || !strings.Contains(err.Error(), "want at least 64") {
		t.Fatalf("short key file: err = %v", err)
	}
	// So is one that cannot be read (a directory: root reads any file).
	if _, err := LoadKeyFile(t.TempDir()); err == nil {
		t.Fatal("a directory as key file: no error")
	}
	if _, err := LoadKeyFile(filepath.Join(t.TempDir(), "missing")); !os.IsNotExist(err) {
		t.Fatalf("missing key file: err = %v, want not exist", err)
	}
}

// Processes that start at once on a new data dir agree on one key.
func TestLoadOrCreateKeyFileConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.key")
	const n = 8
	ids := make([]string, n)
	created := make([]bool, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, c, err := LoadOrCreateKeyFile(path)
			if err != nil {
				t.Error(err)
				return
			}
			ids[i], created[i] = k.ID(), c
		}()
	}
	wg.Wait()
	nc := 0
	for i := range n {
		if ids[i] != ids[0] {
			t.Errorf("key ids differ: %v", ids)
		}
		if created[i] {
			nc++
		}
	}
	if nc != 1 {
		t.Errorf("%d callers created the key, want 1", nc)
	}
}
