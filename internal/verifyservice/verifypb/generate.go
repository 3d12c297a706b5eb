// Package verifypb holds the generated gRPC code of the verification service.
package verifypb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative verify.proto
