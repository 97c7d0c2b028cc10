package store

import "golang.org/x/sys/unix"

// dontNeed drops the process's mappings of n bytes from addr (madvise MADV_DONTNEED). On a shared mapping of a
// file the contents stay in the page cache: the next access maps the page again from there (a minor fault).
func dontNeed(addr uintptr, n int64) error {
	if _, _, e := unix.Syscall(unix.SYS_MADVISE, addr, uintptr(n), unix.MADV_DONTNEED); e != 0 {
		return e
	}
	return nil
}
