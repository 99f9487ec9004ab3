// KEDA's CustomResourceDefinitions for the deploy tests
// (deploy/autoscaling_test.go validates the chart's ScaledObject against
// config/crd/bases/keda.sh_scaledobjects.yaml of this module). Nothing here
// is built: the module is only downloaded, and its own module so that
// KEDA's many dependencies stay out of deploy/.
module github.com/switchyard/switchyard/tools/keda

go 1.26.0

require github.com/kedacore/keda/v2 v2.21.0
