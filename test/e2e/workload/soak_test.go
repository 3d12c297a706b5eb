package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A round's disk part writes and reads back its file; its peer part checks the echo, and finds one that
// differs.
func TestSoakRoundParts(t *testing.T) {
	dir := t.TempDir()
	if err := diskRound(dir, 1<<16); err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(filepath.Join(dir, "soak.bin")); err != nil || info.Size() != 1<<16 {
		t.Fatalf("the round's file: %v", err)
	}
	peer := httptest.NewServer(http.HandlerFunc(echo))
	defer peer.Close()
	if err := echoRound(context.Background(), peer.Client(), peer.URL, 1<<16); err != nil {
		t.Fatal(err)
	}
	liar := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("something else")) }))
	defer liar.Close()
	if err := echoRound(context.Background(), liar.Client(), liar.URL, 1<<10); err == nil || !strings.Contains(err.Error(), "differs") {
		t.Fatalf("a wrong echo: %v", err)
	}
}
