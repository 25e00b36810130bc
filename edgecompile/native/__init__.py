"""Running a library on a board without Python: the native TVM runtime and our runner,
cross-built with zig from the sources the installed TVM wheels ship."""
