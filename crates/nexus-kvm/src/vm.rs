//! A KVM virtual machine: its memory slots, device buses, and eventfd wiring.

use std::sync::{Arc, OnceLock, RwLock};

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{self, Bus, SharedDevice};
use crate::memory::{MemoryConfig, VmMemory};
use crate::vcpu::{Vcpu, VcpuConfig};
use crate::{Error, Result};

/// How to build a [`Vm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmConfig {
    /// RAM and window sizes.
    pub memory: MemoryConfig,
    /// Create the in-kernel interrupt controllers (PIC, IOAPIC, LAPIC) and PIT. Linux guests
    /// need them; micro-guests take no interrupts and start faster without.
    pub irqchip: bool,
}

/// Which bus an address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    /// Port I/O.
    Pio,
    /// Memory-mapped I/O.
    Mmio,
}

/// The KVM system handle and the CPUID it supports: opened once per process and shared by
/// every VM (a VM's own descriptor does not need it once created), which saves a descriptor
/// and two ioctls per VM.
#[derive(Debug)]
struct System {
    kvm: Kvm,
    supported_cpuid: CpuId,
}

static SYSTEM: OnceLock<System> = OnceLock::new();

fn system() -> Result<&'static System> {
    if let Some(system) = SYSTEM.get() {
        return Ok(system);
    }
    let kvm = Kvm::new().map_err(Error::Kvm)?;
    let supported_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::Kvm)?;
    // Two threads may race here: one handle wins, the other is closed.
    Ok(SYSTEM.get_or_init(|| System {
        kvm,
        supported_cpuid,
    }))
}

/// A VM: the KVM handles, guest memory registered with KVM, and the two device buses.
///
/// A VM whose vCPUs are created and whose devices are attached may be dropped: each vCPU
/// holds the KVM VM (its descriptor does), guest memory and the buses, so the guest runs on
/// and its devices live as long as the vCPUs do. Only what needs the VM's descriptor (adding
/// devices, ioeventfds, irqfds or vCPUs) ends with it; a process with many VMs saves a
/// descriptor per VM that way.
#[derive(Debug)]
pub struct Vm {
    system: &'static System,
    fd: VmFd,
    memory: VmMemory,
    pio: Arc<RwLock<Bus>>,
    mmio: Arc<RwLock<Bus>>,
    irqchip: bool,
    next_vcpu_id: u64,
}

impl Vm {
    /// Creates a VM with fresh memory as `config` says.
    pub fn new(config: VmConfig) -> Result<Self> {
        let memory = VmMemory::new(config.memory)?;
        Self::with_memory(memory, config.irqchip)
    }

    /// Creates a VM over memory made elsewhere (for example a restored snapshot's).
    pub fn with_memory(memory: VmMemory, irqchip: bool) -> Result<Self> {
        let system = system()?;
        let fd = system.kvm.create_vm().map_err(Error::CreateVm)?;
        if irqchip {
            fd.set_tss_address(0xfffb_d000).map_err(Error::IrqChip)?;
            fd.create_irq_chip().map_err(Error::IrqChip)?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            fd.create_pit2(pit).map_err(Error::IrqChip)?;
        }
        for (slot, region) in memory.guest().iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(Error::GuestMemory)?;
            let mem_region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping of `memory_size` bytes. It stays mapped for
            // as long as KVM can use the slot: the VM file descriptor is owned by this `Vm` and
            // dropped before `memory` (declaration order), and every vCPU — which keeps the
            // VM alive in the kernel — holds its own reference to the regions. Slots do not
            // overlap: the regions of a `GuestMemoryMmap` never do.
            unsafe { fd.set_user_memory_region(mem_region) }.map_err(Error::MemoryRegion)?;
        }
        Ok(Vm {
            system,
            fd,
            memory,
            pio: Arc::default(),
            mmio: Arc::default(),
            irqchip,
            next_vcpu_id: 0,
        })
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.system.kvm
    }

    /// Guest memory.
    pub fn memory(&self) -> &VmMemory {
        &self.memory
    }

    /// Whether the in-kernel interrupt controllers exist.
    pub fn has_irqchip(&self) -> bool {
        self.irqchip
    }

    /// The CPUID entries KVM supports, as given to every vCPU.
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.system.supported_cpuid
    }

    /// Places a device on a bus at `[base, base + len)`.
    pub fn add_device(
        &self,
        bus: BusKind,
        device: SharedDevice,
        base: u64,
        len: u64,
    ) -> std::result::Result<(), bus::Error> {
        let bus = match bus {
            BusKind::Pio => &self.pio,
            BusKind::Mmio => &self.mmio,
        };
        bus.write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device, base, len)
    }

    /// Registers `fd` to be signalled, inside KVM, by a guest write to `addr` (a doorbell
    /// that never exits to user space). `datamatch` restricts it to writes of that value.
    pub fn register_ioeventfd(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<u32>,
    ) -> Result<()> {
        match datamatch {
            Some(value) => self.fd.register_ioevent(fd, &addr, value),
            None => self.fd.register_ioevent(fd, &addr, NoDatamatch),
        }
        .map_err(Error::IoEventFd)
    }

    /// Undoes [`Vm::register_ioeventfd`].
    pub fn unregister_ioeventfd(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<u32>,
    ) -> Result<()> {
        match datamatch {
            Some(value) => self.fd.unregister_ioevent(fd, &addr, value),
            None => self.fd.unregister_ioevent(fd, &addr, NoDatamatch),
        }
        .map_err(Error::IoEventFd)
    }

    /// Registers `fd` so that signalling it raises interrupt `gsi` (needs the irqchip).
    pub fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        if !self.irqchip {
            return Err(Error::NoIrqChip);
        }
        self.fd.register_irqfd(fd, gsi).map_err(Error::IrqFd)
    }

    /// Creates the next vCPU, wired to this VM's buses and memory.
    pub fn create_vcpu(&mut self, config: VcpuConfig) -> Result<Vcpu> {
        let id = self.next_vcpu_id;
        let fd = self.fd.create_vcpu(id).map_err(Error::CreateVcpu)?;
        fd.set_cpuid2(&self.system.supported_cpuid)
            .map_err(Error::VcpuSetup)?;
        self.next_vcpu_id += 1;
        Ok(Vcpu::new(
            id,
            fd,
            self.memory.guest().clone(),
            Arc::clone(&self.pio),
            Arc::clone(&self.mmio),
            config,
        ))
    }
}
