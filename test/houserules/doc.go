// Package houserules holds the rules of this repository's architecture as tests: which layer may import which,
// one package comment per package, and the fuzz targets that `make test` runs. A change that breaks a rule
// fails `make test` with the rule's reason; a deliberate exception is written down here, with why.
package houserules
