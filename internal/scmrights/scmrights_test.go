//go:build linux

package scmrights

import (
	"os"
	"syscall"
	"testing"
)

// A message with two descriptors gives the first as a file and closes the second.
func TestFirst(t *testing.T) {
	pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(pair[0])
	defer syscall.Close(pair[1])
	r1, w1, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	defer w1.Close()
	r2, w2, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if err := syscall.Sendmsg(pair[0], []byte("x"), syscall.UnixRights(int(w1.Fd()), int(w2.Fd())), nil, 0); err != nil {
		t.Fatal(err)
	}
	w2.Close() // the received copy is now the last write end of the second pipe
	buf, oob := make([]byte, 1), make([]byte, syscall.CmsgSpace(2*4))
	_, oobn, _, _, err := syscall.Recvmsg(pair[1], buf, oob, 0)
	if err != nil {
		t.Fatal(err)
	}
	f, err := First(oob[:oobn], "first")
	if err != nil || f == nil {
		t.Fatalf("First = %v, %v; want the first descriptor", f, err)
	}
	defer f.Close()
	if f.Name() != "first" {
		t.Errorf("name %q, want first", f.Name())
	}
	if _, err := f.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1)
	if _, err := r1.Read(got); err != nil || got[0] != 'y' {
		t.Errorf("the file is not the first pipe's write end: read %q, %v", got, err)
	}
	// The second descriptor was closed: its pipe has no writer left, so the read end sees EOF.
	if n, err := r2.Read(got); n != 0 || err == nil {
		t.Errorf("second pipe read %d, %v; want EOF (the extra descriptor closed)", n, err)
	}
	if f, err := First(nil, "none"); f != nil || err != nil {
		t.Errorf("First(no message) = %v, %v; want nil, nil", f, err)
	}
}
