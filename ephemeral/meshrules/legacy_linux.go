package meshrules

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The getsockopt interface of x_tables (linux/netfilter_ipv4/ip_tables.h, and the same numbers
// for IPv6 in ip6_tables.h).
const (
	iptSoGetInfo    = 64 // IPT_SO_GET_INFO, IP6T_SO_GET_INFO
	iptSoGetEntries = 65 // IPT_SO_GET_ENTRIES, IP6T_SO_GET_ENTRIES
	xtTableMaxName  = 32
	// struct ipt_getinfo { char name[32]; unsigned int valid_hooks, hook_entry[5], underflow[5],
	// num_entries, size; }
	getInfoSize = 84
	// struct ipt_get_entries { char name[32]; unsigned int size; struct ipt_entry entrytable[]; }:
	// the entries start 8-aligned.
	getEntriesHeader = 40
)

// legacyTables are the iptables-legacy tables read: nat, where a mesh's REDIRECT capture is, and
// mangle, where Istio's TPROXY interception is.
var legacyTables = []string{"nat", "mangle"}

// readLegacy reads the iptables-legacy tables of the calling thread's network namespace. A table
// that the namespace does not have is not read: asking the kernel for it would create it (as
// `iptables-legacy -L` does), changing the pod.
func readLegacy() ([]*Table, []legacyBlob, error) {
	var tables []*Table
	var blobs []legacyBlob
	for _, fam := range []Family{FamilyIPv4, FamilyIPv6} {
		names, err := legacyTableNames(fam)
		if err != nil {
			return nil, nil, err
		}
		for _, name := range legacyTables {
			if !names[name] {
				continue
			}
			blob, err := getLegacy(fam, name)
			if err != nil {
				return nil, nil, fmt.Errorf("read iptables-legacy %s table %s: %w", fam, name, err)
			}
			t, err := parseLegacyBlob(fam, name, blob)
			if err != nil {
				return nil, nil, fmt.Errorf("read iptables-legacy %s table %s: %w", fam, name, err)
			}
			tables = append(tables, t)
			blobs = append(blobs, legacyBlob{fam, name, blob})
		}
	}
	return tables, blobs, nil
}

// legacyBlob is a legacy table as the kernel gave it, for golden files.
type legacyBlob struct {
	Family Family
	Table  string
	Blob   []byte
}

// legacyTableNames lists the x_tables the namespace has, from /proc/net/ip_tables_names (the
// calling thread's namespace: thread-self, because a test's thread may have switched).
func legacyTableNames(fam Family) (map[string]bool, error) {
	file := "/proc/thread-self/net/ip_tables_names"
	if fam == FamilyIPv6 {
		file = "/proc/thread-self/net/ip6_tables_names"
	}
	f, err := os.Open(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil // x_tables is not loaded: no legacy table anywhere
	}
	if err != nil {
		return nil, fmt.Errorf("list iptables-legacy tables: %w", err)
	}
	defer f.Close()
	names := map[string]bool{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		names[s.Text()] = true
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("list iptables-legacy tables: %w", err)
	}
	return names, nil
}

// getLegacy asks the kernel for a table the way iptables does, and returns its ipt_getinfo
// followed by its entries (the blob parseLegacyBlob reads).
func getLegacy(fam Family, name string) ([]byte, error) {
	domain, level := unix.AF_INET, unix.SOL_IP
	if fam == FamilyIPv6 {
		domain, level = unix.AF_INET6, unix.SOL_IPV6
	}
	// iptables asks through a raw socket, which needs CAP_NET_RAW; the kernel answers the same
	// getsockopt on any socket of the family (ip_getsockopt hands options it does not know to
	// netfilter), and checks only CAP_NET_ADMIN, all a steal's agent has.
	fd, err := unix.Socket(domain, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("udp socket: %w", err)
	}
	defer unix.Close(fd)
	// The table may change between the two calls; the kernel then says EAGAIN.
	for range 5 {
		info := make([]byte, getInfoSize)
		copy(info, name)
		if err := getsockopt(fd, level, iptSoGetInfo, info); err != nil {
			return nil, fmt.Errorf("getsockopt IPT_SO_GET_INFO: %w", err)
		}
		size := ne.Uint32(info[80:])
		buf := make([]byte, getEntriesHeader+int(size))
		copy(buf, name)
		ne.PutUint32(buf[xtTableMaxName:], size)
		err := getsockopt(fd, level, iptSoGetEntries, buf)
		if errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("getsockopt IPT_SO_GET_ENTRIES: %w", err)
		}
		return append(info, buf[getEntriesHeader:]...), nil
	}
	return nil, errors.New("the table kept changing while it was read")
}

func getsockopt(fd, level, opt int, buf []byte) error {
	l := uint32(len(buf))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}
