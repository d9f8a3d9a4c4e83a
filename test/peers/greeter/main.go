// Command greeter is the trafficlab gRPC test peer: the upstream helloworld Greeter
// (its reply names the pod that answered), the standard grpc.health.v1 service and
// server reflection, so grpcurl-style clients work without .proto files.
// Usage: peer-greeter [-addr :50051]   (or GREETER_ADDR)
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"

	"google.golang.org/grpc"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
)

type greeter struct {
	pb.UnimplementedGreeterServer
	pod string
}

func (g greeter) SayHello(_ context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	return &pb.HelloReply{Message: "Hello " + in.GetName() + " from " + g.pod}, nil
}

func main() {
	def := os.Getenv("GREETER_ADDR")
	if def == "" {
		def = ":50051"
	}
	addr := flag.String("addr", def, "listen address")
	flag.Parse()
	pod := os.Getenv("POD_NAME")
	if pod == "" {
		pod, _ = os.Hostname()
	}
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	s := grpc.NewServer()
	pb.RegisterGreeterServer(s, greeter{pod: pod})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(pb.Greeter_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	reflection.Register(s)
	log.Printf("peer-greeter %s listening on %s", pod, lis.Addr())
	log.Fatal(s.Serve(lis))
}
