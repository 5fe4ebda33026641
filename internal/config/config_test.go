package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestApplyPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte("listen: 0.0.0.0:1\ndata-dir: /file\nlabels: {role: web, dc: fra}\nendpoints: [a, b]\ninterval: 3s\n"), 0o600)
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:7400", "")
	dataDir := fs.String("data-dir", "/default", "")
	labels := fs.String("labels", "", "")
	eps := fs.StringSlice("endpoints", nil, "")
	iv := fs.Duration("interval", time.Second, "")
	fs.String("config", "", "")
	if err := fs.Parse([]string{"--config", cfg, "--listen", "127.0.0.1:9"}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("T_DATA_DIR", "/env")
	if err := Apply(fs, "T_", "config"); err != nil {
		t.Fatal(err)
	}
	if *listen != "127.0.0.1:9" || *dataDir != "/env" || *labels != "dc=fra,role=web" ||
		strings.Join(*eps, "|") != "a|b" || *iv != 3*time.Second {
		t.Fatalf("got listen=%s data-dir=%s labels=%s endpoints=%v interval=%s", *listen, *dataDir, *labels, *eps, *iv)
	}
}

func TestApplyUnknownKey(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(cfg, []byte("lisen: x\n"), 0o600)
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.String("listen", "", "")
	fs.String("config", "", "")
	fs.Parse([]string{"--config", cfg})
	if err := Apply(fs, "T_", "config"); err == nil || !strings.Contains(err.Error(), "lisen") {
		t.Fatalf("err = %v, want one naming lisen", err)
	}
}
