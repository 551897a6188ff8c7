package engine

import "testing"

// The own container's ID from the files the engine mounts over /etc: Docker's and Podman's paths,
// a data root on its own filesystem, and the lines that are not those files.
func TestMountedContainerIDs(t *testing.T) {
	const a = "64061d2abeb3a1f0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e0f2a4b6c8d0e2f4a6b8"
	const b = "a86f9f6a7bdae2e2c3b814e3c40f92a6daa5771b61b7ca242e30bf668492a762"
	mountinfo := "1 0 0:1 / / rw - overlay overlay rw,upperdir=/var/lib/docker/overlay2/" + b + "/diff\n" +
		"2 1 254:1 /var/lib/docker/containers/" + a + "/resolv.conf /etc/resolv.conf rw - ext4 /dev/vda rw\n" +
		"3 1 254:1 /var/lib/docker/containers/" + a + "/hostname /etc/hostname rw - ext4 /dev/vda rw\n" +
		"4 1 254:2 /containers/" + a + "/hosts /etc/hosts rw - ext4 /dev/vdb rw\n" +
		"5 1 0:50 /overlay-containers/" + b + "/userdata/hostname /etc/hostname rw - tmpfs tmpfs rw\n" +
		"6 1 254:1 /var/lib/docker/containers/" + b + "/mounts/shm /dev/shm rw - tmpfs shm rw\n"
	got := mountedContainerIDs(mountinfo)
	if len(got) != 2 || got[0] != a || got[1] != b {
		t.Errorf("MountedContainerIDs = %q; want [%s %s]", got, a, b)
	}
}
