// csrc/cuda/conv2d.cu compiled as host C++ for the emulated-CUDA build (setup.py, ../runtime.h).
#include "../conv2d.cu"
