package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// meshCA is the test mesh's certificate authority (the harness's, mounted from a Secret): what
// Istio's istiod or Linkerd's identity controller is to the real sidecars.
type meshCA struct {
	cert *x509.Certificate
	key  crypto.Signer
	pool *x509.CertPool
}

// loadCA reads ca.crt and ca.key (PEM; the key PKCS#8, PKCS#1 or SEC 1) from dir.
func loadCA(dir string) (*meshCA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("mesh CA: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, fmt.Errorf("mesh CA: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("mesh CA in %q: %w", dir, err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("mesh CA in %q: %w", dir, err)
	}
	key, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("mesh CA in %q: the key cannot sign", dir)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &meshCA{cert: cert, key: key, pool: pool}, nil
}

// credentials are a sidecar's TLS configurations: its identity's certificate, and the CA it
// trusts for its peers'.
type credentials struct {
	server, client *tls.Config
}

// issue makes the workload certificate for id (as a URI SAN for Istio, a DNS SAN for Linkerd),
// usable both ways, and the TLS configurations that require the peer's to come from this CA.
func (ca *meshCA) issue(m mesh, id string) (credentials, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return credentials{}, fmt.Errorf("workload key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return credentials{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: id},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if m.upstreamFromLoopback {
		u, err := url.Parse(id)
		if err != nil {
			return credentials{}, fmt.Errorf("workload identity %q: %w", id, err)
		}
		tmpl.URIs = []*url.URL{u}
	} else {
		tmpl.DNSNames = []string{id}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return credentials{}, fmt.Errorf("workload certificate: %w", err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: key}
	// The client checks the chain, not a name: the real sidecars learn the expected server identity
	// from their control plane, which this test mesh does not have.
	verifyServer := func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the peer sent no certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: ca.pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		return err
	}
	return credentials{
		server: &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.pool, MinVersion: tls.VersionTLS12},
		client: &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, VerifyConnection: verifyServer, MinVersion: tls.VersionTLS12}, //nolint:gosec // the chain is verified in VerifyConnection
	}, nil
}
