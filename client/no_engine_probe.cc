// A program that only links attention-cli's libraries (with --no-as-needed;
// see client/CMakeLists.txt), so that `ldd` of it lists every shared library
// attention-cli's link line brings, used or not. It does nothing.
int main() { return 0; }
