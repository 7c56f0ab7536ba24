// csrc/cuda/max_pool2d.cu compiled as host C++ for the emulated-CUDA build (setup.py, ../runtime.h).
#include "../max_pool2d.cu"
