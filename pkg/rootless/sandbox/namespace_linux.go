package sandbox

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The helper's side: everything here runs inside the new namespaces.

const tunPath = "/dev/net/tun"

// setupNetwork brings lo up and creates the TUN device as the default route for IPv4 and, when the
// kernel has IPv6, IPv6. It returns the device's descriptor.
func setupNetwork() (*os.File, error) {
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		return nil, capsError("bring up lo", err)
	}
	tun, err := openTUN()
	if err != nil {
		return nil, err
	}
	if err := configureTUN(); err != nil {
		tun.Close()
		return nil, err
	}
	return tun, nil
}

func openTUN() (*os.File, error) {
	fd, err := unix.Open(tunPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, tunOpenError(err)
	}
	ifr, err := unix.NewIfreq(TUNName)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, capsError("create TUN device", err)
	}
	return os.NewFile(uintptr(fd), tunPath), nil
}

// tunOpenError sorts the failure to open /dev/net/tun; the plugin's preflight does the same, and
// this one is for a helper whose view differs.
func tunOpenError(err error) error {
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
		return &setupError{reason: reasonTUNMissing, err: fmt.Errorf("open %s: %w", tunPath, err)}
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return &setupError{reason: reasonTUNDenied, err: fmt.Errorf("open %s: %w", tunPath, err)}
	}
	return fmt.Errorf("open %s: %w", tunPath, err)
}

// capsError marks a permission error of an operation the helper's capabilities should allow: a
// security module took them away.
func capsError(what string, err error) error {
	err = fmt.Errorf("%s: %w", what, err)
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return &setupError{reason: reasonNoCaps, err: err}
	}
	return err
}

func configureTUN() error {
	link, err := netlink.LinkByName(TUNName)
	if err != nil {
		return fmt.Errorf("find %s: %w", TUNName, err)
	}
	if err := netlink.LinkSetMTU(link, MTU); err != nil {
		return capsError("set MTU", err)
	}
	v4 := &net.IPNet{IP: net.ParseIP(SandboxIPv4), Mask: net.CIDRMask(PrefixLenIPv4, 32)}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: v4}); err != nil {
		return capsError("add address", err)
	}
	// No duplicate address detection: nothing else is on the link, and it would keep the address
	// unusable for a second while the command already runs.
	v6 := &net.IPNet{IP: net.ParseIP(SandboxIPv6), Mask: net.CIDRMask(PrefixLenIPv6, 128)}
	hasV6 := netlink.AddrAdd(link, &netlink.Addr{IPNet: v6, Flags: unix.IFA_F_NODAD}) == nil
	if err := netlink.LinkSetUp(link); err != nil {
		return capsError("bring up "+TUNName, err)
	}
	routes := []*netlink.Route{{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)},
		Gw:        net.ParseIP(GatewayIPv4),
	}}
	if hasV6 {
		routes = append(routes, &netlink.Route{
			LinkIndex: link.Attrs().Index,
			Dst:       &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
			Gw:        net.ParseIP(GatewayIPv6),
		})
	}
	for _, r := range routes {
		if err := netlink.RouteAdd(r); err != nil {
			return capsError("add default route via "+r.Gw.String(), err)
		}
	}
	if hasV6 {
		waitLocalRoute(v6.IP)
	}
	return nil
}

// waitLocalRoute waits until the kernel routes ip to this host. Even without duplicate address
// detection, the kernel adds an IPv6 address's local route from a work queue a moment after the
// link comes up; until then the address is usable as a source, but answers to it are dropped (a
// quick command's first UDP reply was lost that way).
func waitLocalRoute(ip net.IP) {
	filter := &netlink.Route{Table: unix.RT_TABLE_LOCAL, Dst: &net.IPNet{IP: ip, Mask: net.CIDRMask(128, 128)}}
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		rs, err := netlink.RouteListFiltered(netlink.FAMILY_V6, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
		if err != nil || len(rs) > 0 {
			return
		}
	}
}

// setupResolver makes content the namespace's /etc/resolv.conf and hides the resolver shortcuts.
// Mounts are private first, so none of this reaches the host (an unprivileged mount namespace gets
// no propagation to the host anyway; this also stops the host's mounts from reaching in).
func setupResolver(content []byte) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return capsError("make mounts private", err)
	}
	// Resolved before the masks go in: /etc/resolv.conf is often a symlink into one of the masked
	// directories (systemd-resolved's stub-resolv.conf).
	target := resolveLinks("/etc/resolv.conf")
	// Directories of sockets through which glibc resolves names without reading resolv.conf: nscd's,
	// and systemd-resolved's (nss-resolve's varlink socket). An empty tmpfs over each makes glibc
	// fall back to resolv.conf, as when those daemons are not running.
	shortcuts := []string{"/run/nscd", "/var/run/nscd", "/run/systemd/resolve"}
	var masked []string
	for _, dir := range shortcuts {
		resolved, err := filepath.EvalSymlinks(dir)
		if err != nil || slices.Contains(masked, resolved) {
			continue
		}
		if fi, err := os.Stat(resolved); err != nil || !fi.IsDir() {
			continue
		}
		if err := unix.Mount("tmpfs", resolved, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0755,size=64k"); err != nil {
			return capsError("hide "+resolved, err)
		}
		masked = append(masked, resolved)
	}
	for _, dir := range masked {
		if strings.HasPrefix(target, dir+"/") {
			// The masking tmpfs is ours: the file can simply be written there.
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			return os.WriteFile(target, content, 0o644)
		}
	}
	return bindFile(content, target)
}

// resolveLinks follows path's symlinks as far as they go, also when the last one dangles.
func resolveLinks(path string) string {
	for range 40 {
		if dir, err := filepath.EvalSymlinks(filepath.Dir(path)); err == nil {
			path = filepath.Join(dir, filepath.Base(path))
		}
		link, err := os.Readlink(path)
		if err != nil {
			return path
		}
		if !filepath.IsAbs(link) {
			link = filepath.Join(filepath.Dir(path), link)
		}
		path = filepath.Clean(link)
	}
	return path
}

// bindFile mounts a file with content over target. The file lives on a tmpfs mounted for a moment
// over /tmp; once the file is bound, that tmpfs is detached again, and the bind mount alone keeps
// it alive (and away from the host's disk).
func bindFile(content []byte, target string) error {
	if _, err := os.Stat(target); err != nil {
		return fmt.Errorf("replace %s: %w", target, err)
	}
	scratch := "/tmp"
	if fi, err := os.Stat(scratch); err != nil || !fi.IsDir() {
		scratch = "/"
	}
	if err := unix.Mount("tmpfs", scratch, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700,size=64k"); err != nil {
		return capsError("mount scratch tmpfs", err)
	}
	src := filepath.Join(scratch, "resolv.conf")
	err := os.WriteFile(src, content, 0o644)
	if err == nil {
		err = unix.Mount(src, target, "", unix.MS_BIND, "")
		if err != nil {
			err = capsError("bind "+target, err)
		}
	}
	if uerr := unix.Unmount(scratch, unix.MNT_DETACH); uerr != nil && err == nil {
		err = fmt.Errorf("detach scratch tmpfs: %w", uerr)
	}
	return err
}
