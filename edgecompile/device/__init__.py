"""Running compiled libraries on (emulated) target boards.

``edgecompile.device.emulator`` emulates an aarch64 board (Raspberry Pi 4 class) on an x86
host with qemu-user and an arm64 Debian root filesystem, so cross-compiled TVM libraries can be
checked for correct results without the hardware.
"""
