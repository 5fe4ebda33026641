package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/mpfleet/mpfleet/internal/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestClaimSession: one replica at a time holds a host's session key; the
// holder may claim it again (under a new lease), another replica is refused
// with the holder named until the holder releases it or its lease ends.
func TestClaimSession(t *testing.T) {
	s, c := newStore(t)
	ctx := context.Background()
	grant := func() clientv3.LeaseID {
		t.Helper()
		resp, err := c.Grant(ctx, 60)
		if err != nil {
			t.Fatal(err)
		}
		return resp.ID
	}
	value := func() string {
		t.Helper()
		resp, err := c.Get(ctx, "/test/sessions/h1")
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return ""
		}
		return string(resp.Kvs[0].Value)
	}
	la, lb := grant(), grant()
	if holder, err := s.ClaimSession(ctx, "h1", "a", la); err != nil || holder != "a" {
		t.Fatalf("first claim: %q, %v", holder, err)
	}
	holder, err := s.ClaimSession(ctx, "h1", "b", lb)
	if !errors.Is(err, store.ErrAlreadyExists) || holder != "a" {
		t.Fatalf("claim by another replica: %q, %v; want replica a named and ErrAlreadyExists", holder, err)
	}
	if v := value(); v != "a" {
		t.Fatalf("after the refused claim the key holds %q, want a", v)
	}
	// The holder again, under a new lease (its old one was lost).
	la2 := grant()
	if _, err := s.ClaimSession(ctx, "h1", "a", la2); err != nil {
		t.Fatalf("the holder's claim again: %v", err)
	}
	resp, err := c.Get(ctx, "/test/sessions/h1")
	if err != nil || len(resp.Kvs) != 1 || clientv3.LeaseID(resp.Kvs[0].Lease) != la2 {
		t.Fatalf("after the holder's second claim: %v, %v; want lease %x", resp.Kvs, err, la2)
	}
	// Another replica's release does nothing; the holder's frees the key.
	if err := s.DeleteSession(ctx, "h1", "b"); err != nil {
		t.Fatal(err)
	}
	if v := value(); v != "a" {
		t.Fatalf("after b's release the key holds %q, want a", v)
	}
	if err := s.DeleteSession(ctx, "h1", "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimSession(ctx, "h1", "b", lb); err != nil {
		t.Fatalf("claim after the holder released: %v", err)
	}
	// The holder's lease ends (a dead replica): the key goes with it.
	if _, err := c.Revoke(ctx, lb); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimSession(ctx, "h1", "a", la2); err != nil {
		t.Fatalf("claim after the holder's lease ended: %v", err)
	}
	if v := value(); v != "a" {
		t.Fatalf("key holds %q, want a", v)
	}
}
