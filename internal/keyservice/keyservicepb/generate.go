// Package keyservicepb holds the key service's gRPC API, generated from keyservice.proto.
package keyservicepb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative keyservice.proto
