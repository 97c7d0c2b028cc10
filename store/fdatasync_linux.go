package store

import (
	"os"

	"golang.org/x/sys/unix"
)

// fdatasync flushes f's data (not its metadata beyond the size) to disk.
func fdatasync(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }

// preallocate allocates n bytes of f from off, extending its size.
func preallocate(f *os.File, off, n int64) error { return unix.Fallocate(int(f.Fd()), 0, off, n) }
