// The Python module `onerec_kernels._C`. It exposes no Python functions: importing it runs the
// static TORCH_LIBRARY registrations of the other translation units, so every native op is
// reached as torch.ops.onerec_C.<name> (and works with opcheck / torch.compile).
#include <Python.h>

static struct PyModuleDef onerec_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&onerec_c_module); }
