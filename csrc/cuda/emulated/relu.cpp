// csrc/cuda/relu.cu compiled as host C++ for the emulated-CUDA build (setup.py, ../runtime.h).
#include "../relu.cu"
