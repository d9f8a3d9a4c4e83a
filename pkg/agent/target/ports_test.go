package target

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func portsPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name:  "app",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "metrics", ContainerPort: 9090}},
		}}},
	}
}

func TestParsePortSpec(t *testing.T) {
	tests := []struct {
		in      string
		want    PortSpec
		wantErr string
	}{
		{in: "80", want: PortSpec{Remote: "80", Port: 80, Local: 80}},
		{in: "80:8080", want: PortSpec{Remote: "80", Port: 80, Local: 8080}},
		{in: "http:8080", want: PortSpec{Remote: "http", Local: 8080}},
		{in: "http", wantErr: "a named port needs a LOCAL port"},
		{in: ":80", wantErr: "REMOTE is empty"},
		{in: "0", wantErr: "out of range"},
		{in: "80:0", wantErr: "LOCAL must be a port number"},
		{in: "Bad_Name:1", wantErr: "neither a port number nor a port name"},
	}
	for _, tt := range tests {
		got, err := ParsePortSpec(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParsePortSpec(%q) = %+v, %v; want error %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParsePortSpec(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestResolvePorts(t *testing.T) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "web", Port: 80, TargetPort: intstr.FromString("http")},
			{Name: "admin", Port: 81, TargetPort: intstr.FromInt32(7070)},
			{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
		}},
	}
	tests := []struct {
		name         string
		svc          *corev1.Service
		specs        []PortSpec
		want         []int
		wantWarnings []string
		wantErr      string
	}{
		{name: "pod number", specs: []PortSpec{{Remote: "8080", Local: 1}}, want: []int{8080}},
		{name: "pod name", specs: []PortSpec{{Remote: "metrics", Local: 1}}, want: []int{9090}},
		{name: "pod unknown name", specs: []PortSpec{{Remote: "grpc", Local: 1}}, wantErr: `pod "web-1" has no TCP container port named "grpc"`},
		{name: "undeclared port warns", specs: []PortSpec{{Remote: "3000", Local: 1}}, want: []int{3000}, wantWarnings: []string{`container "app" does not declare port 3000; using it anyway`}},
		{name: "service port to named target", svc: svc, specs: []PortSpec{{Remote: "80", Local: 1}}, want: []int{8080}},
		{name: "service port by name to number", svc: svc, specs: []PortSpec{{Remote: "admin", Local: 1}}, want: []int{7070}, wantWarnings: []string{`container "app" does not declare port 7070; using it anyway`}},
		{name: "service lacks port", svc: svc, specs: []PortSpec{{Remote: "8080", Local: 1}}, wantErr: `service "web" has no TCP port "8080"; its TCP ports are 80 (web), 81 (admin)`},
		{name: "service UDP port refused", svc: svc, specs: []PortSpec{{Remote: "53", Local: 1}}, wantErr: `service "web" has no TCP port "53"`},
		{name: "same pod port twice", svc: svc, specs: []PortSpec{{Remote: "80", Local: 1}, {Remote: "web", Local: 2}}, wantErr: `both name the pod's port 8080`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tg := &Target{Pod: portsPod(), Container: "app", Service: tt.svc}
			got, warnings, err := ResolvePorts(tg, tt.specs)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var ports []int
			for _, p := range got {
				ports = append(ports, p.Port)
			}
			if diff := cmp.Diff(tt.want, ports); diff != "" {
				t.Errorf("ports (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantWarnings, warnings); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}
