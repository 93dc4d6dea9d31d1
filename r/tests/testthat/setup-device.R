# KILN_TEST_DEVICE=gpu runs the whole suite with the GPU as the default
# device (scripts/gpu.sh r-test does, on a machine with an NVIDIA GPU).
test_device <- Sys.getenv("KILN_TEST_DEVICE", "cpu")
if (test_device != "cpu") {
  mlx_default_device(test_device)
}
