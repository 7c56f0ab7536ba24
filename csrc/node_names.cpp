// Python types named after our autograd nodes, so that a grad_fn prints as ATen's do
// (<LinearBackward object at ...>, not <CppFunction object at ...>) and torch.autograd.graph.Node
// counts it as a node. Node::name() alone does not reach repr: torch wraps a C++ node in the Python
// type its dynamic C++ type is registered with (registerCppFunction, looked up by
// functionToPyObject), or else in one generic "CppFunction" type.
// ATen registers static PyTypeObjects. This library is built for Python's limited API (one binary
// for every Python), where a type object's layout is hidden: so each type is made with
// PyType_FromSpec out of the generic type's own slots (the same THPCppFunction object: call,
// methods, properties, GC), and listed with the two functions of libtorch_python used here.
#include <Python.h>
#include <torch/csrc/autograd/function.h>

#include <deque>
#include <memory>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace torch::autograd {
// Declared in torch/csrc/autograd/python_cpp_function.h, which needs the full Python API.
using NodePtr = decltype(std::declval<Node&>().getptr());  // intrusive_ptr; shared_ptr before 2.13
void registerCppFunction(const std::type_info& type, PyTypeObject* pytype);
PyObject* functionToPyObject(const NodePtr& cdata);
}  // namespace torch::autograd

namespace lenet_ext {

std::vector<std::pair<const std::type_info*, const char*>> autograd_node_types();  // autograd.cpp

namespace {

// A node of no registered type, to find the generic type.
struct Probe : torch::autograd::Node {
  torch::autograd::variable_list apply(torch::autograd::variable_list&&) override { return {}; }
};

destructor generic_dealloc = nullptr;

// An object of a heap type holds a reference to its type (taken by tp_alloc), which the generic
// type's dealloc, written for a static type, does not give back.
void node_dealloc(PyObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  generic_dealloc(self);
  Py_DECREF(type);
}

template <typename N>  // a template, so that the branch for the other torch is not compiled
PyTypeObject* generic_node_type() {
  torch::autograd::NodePtr probe;
  if constexpr (std::is_base_of_v<c10::intrusive_ptr_target, N>)
    probe = c10::make_intrusive<N>();
  else
    probe = std::make_shared<N>();
  PyObject* object = torch::autograd::functionToPyObject(probe);
  if (object == nullptr) return nullptr;
  PyTypeObject* type = Py_TYPE(object);
  Py_DECREF(object);
  return type;
}

}  // namespace

// Makes and registers a Python type for each node type; 0, or -1 with a Python exception set.
int name_autograd_nodes() {
  PyTypeObject* generic = generic_node_type<Probe>();
  if (generic == nullptr) return -1;
  PyObject* basicsize =
      PyObject_GetAttrString(reinterpret_cast<PyObject*>(generic), "__basicsize__");
  if (basicsize == nullptr) return -1;
  const long size = PyLong_AsLong(basicsize);
  Py_DECREF(basicsize);
  PyObject* torch_c = PyImport_ImportModule("torch._C");
  if (torch_c == nullptr) return -1;
  // ATen's node types live here, and torch.autograd.graph.Node recognises a type by it
  PyObject* functions = PyObject_GetAttrString(torch_c, "_functions");
  Py_DECREF(torch_c);
  if (functions == nullptr) return -1;
  generic_dealloc = reinterpret_cast<destructor>(PyType_GetSlot(generic, Py_tp_dealloc));
  int status = 0;
  for (const auto& [cpp_type, name] : autograd_node_types()) {
    PyType_Slot slots[] = {{Py_tp_call, PyType_GetSlot(generic, Py_tp_call)},
                           {Py_tp_dealloc, reinterpret_cast<void*>(&node_dealloc)},
                           {Py_tp_traverse, PyType_GetSlot(generic, Py_tp_traverse)},
                           {Py_tp_clear, PyType_GetSlot(generic, Py_tp_clear)},
                           {Py_tp_methods, PyType_GetSlot(generic, Py_tp_methods)},
                           {Py_tp_getset, PyType_GetSlot(generic, Py_tp_getset)},
                           {0, nullptr}};
    // Module "builtins", as ATen's node types have, so that repr shows the bare tp_name; set
    // through the spec's dotted name (an undotted one draws a warning), then __name__ makes tp_name
    // the bare name. Python before 3.12 keeps the spec's name as tp_name until then: kept alive.
    static std::deque<std::string> dotted_names;
    const char* dotted = dotted_names.emplace_back(std::string("builtins.") + name).c_str();
    PyType_Spec spec = {dotted, static_cast<int>(size), 0,
                        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
                            Py_TPFLAGS_DISALLOW_INSTANTIATION,  // only torch makes nodes' objects
                        slots};
    PyObject* type = PyType_FromSpec(&spec);
    PyObject* bare = type == nullptr ? nullptr : PyUnicode_FromString(name);
    const bool named = bare != nullptr && PyObject_SetAttrString(type, "__name__", bare) == 0;
    Py_XDECREF(bare);
    if (!named || PyObject_SetAttrString(functions, name, type) != 0) {
      Py_XDECREF(type);
      status = -1;
      break;
    }
    torch::autograd::registerCppFunction(*cpp_type, reinterpret_cast<PyTypeObject*>(type));
    Py_DECREF(type);  // the registry and torch._C._functions hold it
  }
  Py_DECREF(functions);
  return status;
}

}  // namespace lenet_ext
