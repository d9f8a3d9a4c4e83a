// Command mkimage packs root filesystem directories into an image tarball that
// `ctr -n k8s.io images import` accepts, without Docker or a registry.
//
// One platform gives a docker-save tarball (manifest.json + RepoTags); several give an
// OCI image-layout archive whose index.json points at an image index (one manifest per
// platform) annotated with io.containerd.image.name, so ctr names it without --base-name.
// Output is deterministic: fixed mtimes and owners, sorted entries, sorted platforms.
//
//	mkimage -platform linux/amd64=DIR [-platform linux/arm64=DIR2] -tag REF \
//	    [-entrypoint /x[,arg]] [-cmd a,b] [-user 65532] [-env K=V] [-workdir /] [-format auto|oci|docker] \
//	    [-out FILE] [-push] [-digest-file FILE]
//
// -push sends the same image (index) to the registry named by -tag, with the credentials of
// $GITHUB_TOKEN for ghcr.io (the release workflow's) and none elsewhere; -digest-file writes the
// digest of what was written or pushed (the index digest for several platforms), which the release
// links into the plugin. The pushed digest equals the archive's: both come from one index value.
package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/authn/github"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// annotationImageName is what containerd's importer uses as the image name.
const annotationImageName = "io.containerd.image.name"

type platformDir struct {
	platform v1.Platform
	dir      string
}

type options struct {
	platforms  []platformDir
	tag        string
	entrypoint []string
	cmd        []string
	user       string
	env        []string
	workdir    string
	format     string // auto, oci, docker
	out        string
	push       bool
	digestFile string
	mtime      time.Time
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func parsePlatform(s string) (platformDir, error) {
	spec, dir, ok := strings.Cut(s, "=")
	if !ok || dir == "" {
		return platformDir{}, fmt.Errorf("platform %q: want os/arch[/variant]=DIR", s)
	}
	p, err := v1.ParsePlatform(spec)
	if err != nil {
		return platformDir{}, fmt.Errorf("platform %q: %w", s, err)
	}
	if p.OS == "" || p.Architecture == "" {
		return platformDir{}, fmt.Errorf("platform %q: want os/arch[/variant]", spec)
	}
	return platformDir{platform: *p, dir: dir}, nil
}

func parseArgs(args []string) (options, error) {
	fl := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	var plats, envs multiFlag
	fl.Var(&plats, "platform", "os/arch[/variant]=ROOTFS_DIR (repeatable)")
	fl.Var(&envs, "env", "K=V added to the image environment (repeatable)")
	rootfs := fl.String("rootfs", "", "shorthand for -platform linux/amd64=DIR")
	tag := fl.String("tag", "", "image reference, e.g. trafficlab.local/peers:abc")
	entry := fl.String("entrypoint", "", "comma-separated entrypoint")
	cmd := fl.String("cmd", "", "comma-separated cmd")
	user := fl.String("user", "", "image user, e.g. 65532 or 65532:65532")
	workdir := fl.String("workdir", "", "working directory")
	format := fl.String("format", "auto", "auto (docker for one platform, oci for several), oci or docker")
	out := fl.String("out", "", "output tarball")
	push := fl.Bool("push", false, "push the image (index) to the registry named by -tag")
	digestFile := fl.String("digest-file", "", "write the digest of the image (index) to this file")
	epoch := fl.Int64("mtime", sourceDateEpoch(), "unix time used for every file and the image creation time")
	if err := fl.Parse(args); err != nil {
		return options{}, err
	}
	if *rootfs != "" {
		plats = append(plats, "linux/amd64="+*rootfs)
	}
	o := options{
		tag: *tag, entrypoint: splitList(*entry), cmd: splitList(*cmd), user: *user, env: envs,
		workdir: *workdir, format: *format, out: *out, push: *push, digestFile: *digestFile, mtime: time.Unix(*epoch, 0).UTC(),
	}
	for _, s := range plats {
		p, err := parsePlatform(s)
		if err != nil {
			return options{}, err
		}
		o.platforms = append(o.platforms, p)
	}
	switch {
	case len(o.platforms) == 0:
		return options{}, errors.New("at least one -platform (or -rootfs) is required")
	case o.tag == "":
		return options{}, errors.New("-tag is required")
	case o.out == "" && !o.push:
		return options{}, errors.New("-out or -push is required")
	}
	if o.format != "auto" && o.format != "oci" && o.format != "docker" {
		return options{}, fmt.Errorf("-format %q: want auto, oci or docker", o.format)
	}
	if o.format == "docker" && len(o.platforms) > 1 {
		return options{}, errors.New("-format docker holds one platform only")
	}
	return o, nil
}

// sourceDateEpoch honours the reproducible-builds convention; 0 otherwise.
func sourceDateEpoch() int64 {
	if v, err := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64); err == nil {
		return v
	}
	return 0
}

// layerTar writes root as an uncompressed tar with normalised metadata.
func layerTar(root string, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	// WalkDir visits entries in lexical order, which keeps the tar (and digest) stable.
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return fmt.Errorf("relative path of %s: %w", p, err)
		}
		if rel == "." {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return fmt.Errorf("stat %s: %w", p, err)
		}
		h := &tar.Header{
			Name: filepath.ToSlash(rel), Mode: int64(fi.Mode().Perm()), ModTime: mtime,
			Uname: "root", Gname: "root", Format: tar.FormatPAX,
		}
		if fi.Mode()&fs.ModeSticky != 0 {
			h.Mode |= 01000
		}
		if fi.Mode()&fs.ModeSetuid != 0 {
			h.Mode |= 04000
		}
		if fi.Mode()&fs.ModeSetgid != 0 {
			h.Mode |= 02000
		}
		switch {
		case fi.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		case fi.Mode()&fs.ModeSymlink != 0:
			h.Typeflag = tar.TypeSymlink
			if h.Linkname, err = os.Readlink(p); err != nil {
				return fmt.Errorf("readlink %s: %w", p, err)
			}
		case fi.Mode().IsRegular():
			h.Typeflag, h.Size = tar.TypeReg, fi.Size()
		default:
			return fmt.Errorf("%s: unsupported file type %s", p, fi.Mode().Type())
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("tar header %s: %w", p, err)
		}
		if h.Typeflag != tar.TypeReg {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("open %s: %w", p, err)
		}
		defer f.Close()
		if _, err := io.Copy(tw, f); err != nil {
			return fmt.Errorf("copy %s: %w", p, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close layer tar: %w", err)
	}
	return buf.Bytes(), nil
}

func buildImage(o options, pd platformDir) (v1.Image, error) {
	data, err := layerTar(pd.dir, o.mtime)
	if err != nil {
		return nil, fmt.Errorf("layer from %s: %w", pd.dir, err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer from %s: %w", pd.dir, err)
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     layer,
		History:   v1.History{Created: v1.Time{Time: o.mtime}, CreatedBy: "mkimage"},
		MediaType: types.OCILayer,
	})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: o.mtime}
	cf.OS, cf.Architecture, cf.Variant = pd.platform.OS, pd.platform.Architecture, pd.platform.Variant
	cf.Config.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, o.env...)
	cf.Config.Entrypoint, cf.Config.Cmd = o.entrypoint, o.cmd
	cf.Config.User, cf.Config.WorkingDir = o.user, o.workdir
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("set config: %w", err)
	}
	return img, nil
}

func build(o options) error {
	ref, err := name.NewTag(o.tag)
	if err != nil {
		return fmt.Errorf("tag %q: %w", o.tag, err)
	}
	// Flag order must not change the digest.
	sort.Slice(o.platforms, func(i, j int) bool {
		return o.platforms[i].platform.String() < o.platforms[j].platform.String()
	})
	imgs := make([]v1.Image, len(o.platforms))
	for i, pd := range o.platforms {
		if imgs[i], err = buildImage(o, pd); err != nil {
			return err
		}
	}
	format := o.format
	if format == "auto" {
		format = "oci"
		if len(imgs) == 1 {
			format = "docker"
		}
	}
	var idx v1.ImageIndex
	if format == "oci" && len(imgs) > 1 {
		idx = imageIndex(o, imgs)
	}
	var digest v1.Hash
	if o.out != "" {
		if digest, err = writeArchive(o, ref, format, imgs, idx); err != nil {
			return err
		}
		log.Printf("wrote %s: %s (%s, %d platform(s)) digest %s", o.out, ref.Name(), format, len(imgs), digest)
	}
	if o.push {
		if digest, err = push(ref, imgs, idx); err != nil {
			return err
		}
		log.Printf("pushed %s (%d platform(s)) digest %s", ref.Name(), len(imgs), digest)
	}
	if o.digestFile != "" {
		if err := os.WriteFile(o.digestFile, []byte(digest.String()+"\n"), 0o644); err != nil {
			return fmt.Errorf("write digest file: %w", err)
		}
	}
	return nil
}

// push sends the index (or the one image) to ref's registry and returns its digest there.
func push(ref name.Tag, imgs []v1.Image, idx v1.ImageIndex) (v1.Hash, error) {
	auth := remote.WithAuthFromKeychain(authn.NewMultiKeychain(github.Keychain))
	if idx != nil {
		if err := remote.WriteIndex(ref, idx, auth); err != nil {
			return v1.Hash{}, fmt.Errorf("push %s: %w", ref.Name(), err)
		}
		return idx.Digest()
	}
	if err := remote.Write(ref, imgs[0], auth); err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", ref.Name(), err)
	}
	return imgs[0].Digest()
}

// writeArchive writes the tarball ctr imports and returns the digest of its top manifest or index.
func writeArchive(o options, ref name.Tag, format string, imgs []v1.Image, idx v1.ImageIndex) (v1.Hash, error) {
	tmp := o.out + ".partial"
	f, err := os.Create(tmp)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("create output: %w", err)
	}
	defer os.Remove(tmp)
	var digest v1.Hash
	if format == "docker" {
		err = tarball.Write(ref, imgs[0], f)
		if err == nil {
			digest, err = imgs[0].Digest()
		}
	} else {
		digest, err = writeOCI(f, ref, o, imgs, idx)
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close output: %w", cerr)
	}
	if err != nil {
		return v1.Hash{}, fmt.Errorf("write %s: %w", o.out, err)
	}
	if err := os.Rename(tmp, o.out); err != nil {
		return v1.Hash{}, fmt.Errorf("rename output: %w", err)
	}
	return digest, nil
}

// imageIndex is the one multi-platform index both the archive and the registry get.
func imageIndex(o options, imgs []v1.Image) v1.ImageIndex {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for i, img := range imgs {
		p := o.platforms[i].platform
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	return idx
}

// ociWriter writes an OCI image layout as a tar stream, each blob once.
type ociWriter struct {
	tw    *tar.Writer
	mtime time.Time
	seen  map[v1.Hash]bool
}

func (w *ociWriter) file(name string, data []byte) error {
	h := &tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: w.mtime, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	if err := w.tw.WriteHeader(h); err != nil {
		return fmt.Errorf("tar header %s: %w", name, err)
	}
	if _, err := w.tw.Write(data); err != nil {
		return fmt.Errorf("tar write %s: %w", name, err)
	}
	return nil
}

func (w *ociWriter) dir(name string) error {
	h := &tar.Header{Name: name, Mode: 0o755, ModTime: w.mtime, Typeflag: tar.TypeDir, Format: tar.FormatPAX}
	if err := w.tw.WriteHeader(h); err != nil {
		return fmt.Errorf("tar header %s: %w", name, err)
	}
	return nil
}

func (w *ociWriter) blob(h v1.Hash, data []byte) error {
	if w.seen[h] {
		return nil
	}
	w.seen[h] = true
	return w.file("blobs/"+h.Algorithm+"/"+h.Hex, data)
}

func (w *ociWriter) image(img v1.Image) error {
	cfgName, err := img.ConfigName()
	if err != nil {
		return fmt.Errorf("config digest: %w", err)
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return fmt.Errorf("raw config: %w", err)
	}
	if err := w.blob(cfgName, cfg); err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("layers: %w", err)
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return fmt.Errorf("layer digest: %w", err)
		}
		rc, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("layer %s: %w", d, err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("read layer %s: %w", d, err)
		}
		if err := w.blob(d, data); err != nil {
			return err
		}
	}
	d, err := img.Digest()
	if err != nil {
		return fmt.Errorf("manifest digest: %w", err)
	}
	m, err := img.RawManifest()
	if err != nil {
		return fmt.Errorf("raw manifest: %w", err)
	}
	return w.blob(d, m)
}

func writeOCI(out io.Writer, ref name.Tag, o options, imgs []v1.Image, idx v1.ImageIndex) (v1.Hash, error) {
	w := &ociWriter{tw: tar.NewWriter(out), mtime: o.mtime, seen: map[v1.Hash]bool{}}
	if err := w.file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return v1.Hash{}, err
	}
	if err := w.dir("blobs/"); err != nil {
		return v1.Hash{}, err
	}
	if err := w.dir("blobs/sha256/"); err != nil {
		return v1.Hash{}, err
	}
	for _, img := range imgs {
		if err := w.image(img); err != nil {
			return v1.Hash{}, err
		}
	}
	// The top descriptor: an image index across platforms, or the manifest itself for one.
	var top v1.Descriptor
	if len(imgs) == 1 {
		d, err := partialDescriptor(imgs[0])
		if err != nil {
			return v1.Hash{}, err
		}
		top = d
		top.Platform = &o.platforms[0].platform
	} else {
		raw, err := idx.RawManifest()
		if err != nil {
			return v1.Hash{}, fmt.Errorf("index manifest: %w", err)
		}
		d, err := idx.Digest()
		if err != nil {
			return v1.Hash{}, fmt.Errorf("index digest: %w", err)
		}
		if err := w.blob(d, raw); err != nil {
			return v1.Hash{}, err
		}
		top = v1.Descriptor{MediaType: types.OCIImageIndex, Digest: d, Size: int64(len(raw))}
	}
	// containerd names the image from io.containerd.image.name; other tools (skopeo, crane,
	// `ctr import --base-name`) use the OCI ref.name, so set both.
	top.Annotations = map[string]string{
		annotationImageName:                 ref.Name(),
		"org.opencontainers.image.ref.name": ref.TagStr(),
	}
	index := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{top}}
	raw, err := json.Marshal(index)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("marshal index.json: %w", err)
	}
	if err := w.file("index.json", raw); err != nil {
		return v1.Hash{}, err
	}
	if err := w.tw.Close(); err != nil {
		return v1.Hash{}, fmt.Errorf("close archive: %w", err)
	}
	return top.Digest, nil
}

func partialDescriptor(img v1.Image) (v1.Descriptor, error) {
	raw, err := img.RawManifest()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("raw manifest: %w", err)
	}
	d, err := img.Digest()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("manifest digest: %w", err)
	}
	mt, err := img.MediaType()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("media type: %w", err)
	}
	return v1.Descriptor{MediaType: mt, Digest: d, Size: int64(len(raw))}, nil
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("mkimage: ")
	o, err := parseArgs(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		log.Fatal(err)
	}
	if err := build(o); err != nil {
		log.Fatal(err)
	}
}
