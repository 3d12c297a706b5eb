// Package initpb holds the bootstrapper's Init gRPC API, generated from init.proto.
package initpb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative init.proto
