package controller_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/mpfleet/mpfleet/controller"
)

// TestRunLogFormat: --log-format json makes every line of the controller's
// log, the embedded etcd's included (component=etcd), a JSON record; an
// unknown format stops the controller at start, naming the flag.
func TestRunLogFormat(t *testing.T) {
	r := runController(t, append(embeddedArgs(t, t.TempDir()), "--log-format", "json", "--log-level", "debug")...)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	var etcd, started int
	for _, line := range strings.Split(strings.TrimSpace(r.log.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not a JSON record: %q: %v", line, err)
		}
		if rec["level"] == nil || rec["msg"] == nil {
			t.Errorf("record without level or msg: %s", line)
		}
		if rec["component"] == "etcd" {
			etcd++
		}
		if rec["msg"] == "starting embedded etcd" {
			started++
		}
	}
	if etcd == 0 || started != 1 {
		t.Errorf("%d etcd records and %d \"starting embedded etcd\" in the log at debug, want some and one:\n%s", etcd, started, r.log.String())
	}

	var out bytes.Buffer
	err := controller.Run(context.Background(), []string{"--log-format", "xml", "--data-dir", t.TempDir()}, &out, &out)
	if err == nil || !strings.HasPrefix(err.Error(), "--log-format: ") {
		t.Errorf("--log-format xml: %v, want an error naming --log-format", err)
	}
}
