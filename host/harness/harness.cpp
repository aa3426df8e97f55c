// Native harness of the DPFM engine's Verilator model, driven from Python through ctypes.
//
// The model is the Verilog that Amaranth generates for one Config (module `dpfm_engine`)
// under a thin top `dpfm_harness` that registers its reset (verilated with
// `--prefix Vdpfm_engine`).  Its only ports are the clock `clk`, the active-high reset `rst`
// and one AXI4-Lite slave `s_axil__*`.  This file is the AXI4-Lite
// master: one access at a time, exactly as the Zynq's GP port issues them, and the polling
// loop of a training step runs here so that Python is not called once per clock cycle.
//
// Clocking: every cycle drives `clk` low, evaluates (inputs set since the last edge settle,
// combinational outputs such as `awready` become valid), samples the handshakes, then drives
// `clk` high and evaluates (the rising edge).  A handshake happens on the rising edge when
// valid and ready are both high just before it.
//
// All functions are `extern "C"`; responses are the AXI codes (0 OKAY, 2 SLVERR, 3 DECERR),
// or DPFM_TIMEOUT (-1) when the slave does not answer within DPFM_BUS_TIMEOUT cycles.
//
// With DPFM_RUN_MODE (an engine with the run-mode AXI4 master `m_axi__*`), the harness is
// also the memory behind that master (`Memory` below): a buffer the host attaches (its own
// numpy array), answered with a configurable latency, random backpressure on every channel
// and occasional long stalls, so that the engine meets what DDR behind the Zynq's HP port
// does to it.  Accesses outside the buffer answer DECERR.

#include <cstdint>
#include <deque>
#include <memory>

#include "Vdpfm_engine.h"
#include "verilated.h"
#ifdef DPFM_TRACE
#include "verilated_fst_c.h"
#endif

// Verilator escapes the double underscore of Amaranth's flattened port names
// (`s_axil__awaddr` becomes the C++ member `s_axil___05Fawaddr`).
#define AXI(name) s_axil___05F##name

// The library exports these functions only (the model may be built -fvisibility=hidden).
#define DPFM_API __attribute__((visibility("default")))

static const int DPFM_TIMEOUT = -1;
static const uint64_t DPFM_BUS_TIMEOUT = 4096;

#ifdef DPFM_RUN_MODE
#define MAXI(name) m_axi___05F##name

// The memory behind the engine's AXI4 master.  Every cycle, `drive` sets the slave's outputs
// from its state alone (as registered outputs would be), and `sample`, after the inputs
// settled, takes the handshakes of that cycle and moves the state on.
struct Memory {
    uint32_t* words = nullptr;      // the host's buffer (not owned)
    uint64_t base = 0, nwords = 0;
    uint64_t slverr_lo = 0, slverr_hi = 0;   // accesses in [lo, hi) answer SLVERR
    // behaviour
    uint32_t latency = 8;           // cycles from an accepted AR to its first beat
    uint32_t stall_pct = 0;         // chance (percent) that a channel is not ready / valid
    uint32_t long_ppm = 0;          // chance (per million cycles) of a long stall
    uint32_t long_cycles = 200;     // its length
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    // state
    struct Burst { uint64_t addr; uint32_t beats; uint64_t ready_at; };
    std::deque<Burst> reads;        // accepted ARs, in order
    std::deque<Burst> writes;       // accepted AWs whose data is not all in
    std::deque<std::pair<int, uint64_t>> resps;   // write responses (code, ready at)
    uint32_t r_beat = 0, w_beat = 0;
    int w_err = 0;
    uint64_t stalled_until = 0;
    bool r_go = false, ar_go = false, aw_go = false, w_go = false, b_go = false;
    uint64_t reads_done = 0, writes_done = 0;

    uint32_t next() {               // xorshift64*
        rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
        return (uint32_t)((rng * 2685821657736338717ull) >> 32);
    }
    bool chance(uint32_t pct) { return pct && next() % 100 < pct; }
    bool inside(uint64_t addr) const {
        return words && addr >= base && addr + 4 <= base + 4 * nwords;
    }
    // The response to a beat at addr: 0 OKAY, 2 SLVERR (the error window), 3 DECERR (outside).
    int answer(uint64_t addr) const {
        if (addr >= slverr_lo && addr < slverr_hi) return 2;
        return inside(addr) ? 0 : 3;
    }
    void drive(Vdpfm_engine* t, uint64_t now) {
        if (long_ppm && now >= stalled_until && next() % 1000000 < long_ppm)
            stalled_until = now + long_cycles;
        const bool stalled = now < stalled_until;
        ar_go = !stalled && reads.size() < 8 && !chance(stall_pct);
        aw_go = !stalled && writes.size() < 8 && !chance(stall_pct);
        t->MAXI(arready) = ar_go;
        t->MAXI(awready) = aw_go;
        r_go = !stalled && !reads.empty() && now >= reads.front().ready_at && !chance(stall_pct);
        t->MAXI(rvalid) = r_go;
        if (r_go) {
            const Burst& b = reads.front();
            const uint64_t a = b.addr + 4ull * r_beat;
            const int resp = answer(a);
            t->MAXI(rdata) = resp == 0 ? words[(a - base) / 4] : 0;
            t->MAXI(rresp) = resp;
            t->MAXI(rlast) = r_beat + 1 == b.beats;
        } else {
            t->MAXI(rdata) = 0;
            t->MAXI(rresp) = 0;
            t->MAXI(rlast) = 0;
        }
        w_go = !stalled && !writes.empty() && !chance(stall_pct);
        t->MAXI(wready) = w_go;
        b_go = !stalled && !resps.empty() && now >= resps.front().second && !chance(stall_pct);
        t->MAXI(bvalid) = b_go;
        t->MAXI(bresp) = b_go ? resps.front().first : 0;
    }
    void sample(Vdpfm_engine* t, uint64_t now) {
        if (ar_go && t->MAXI(arvalid))
            reads.push_back({t->MAXI(araddr), (uint32_t)t->MAXI(arlen) + 1u, now + latency});
        if (r_go && t->MAXI(rready)) {
            if (++r_beat == reads.front().beats) {
                reads.pop_front();
                r_beat = 0;
                ++reads_done;
            }
        }
        if (aw_go && t->MAXI(awvalid))
            writes.push_back({t->MAXI(awaddr), (uint32_t)t->MAXI(awlen) + 1u, now});
        if (w_go && t->MAXI(wvalid)) {
            const Burst& b = writes.front();
            const uint64_t a = b.addr + 4ull * w_beat;
            const int resp = answer(a);
            if (resp == 0 && t->MAXI(wstrb) == 0xF)
                words[(a - base) / 4] = t->MAXI(wdata);
            else if (!w_err)
                w_err = resp ? resp : 2;
            if (++w_beat == b.beats) {
                resps.push_back({w_err, now + latency});
                writes.pop_front();
                w_beat = 0;
                w_err = 0;
                ++writes_done;
            }
        }
        if (b_go && t->MAXI(bready)) resps.pop_front();
    }
    void clear() {
        reads.clear(); writes.clear(); resps.clear();
        r_beat = w_beat = 0; w_err = 0; stalled_until = 0;
    }
};
#endif

struct Harness {
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<Vdpfm_engine> top;
    uint64_t cycles = 0;
    uint64_t accesses = 0;          // AXI4-Lite accesses made (reads and writes)
#ifdef DPFM_RUN_MODE
    Memory mem;
#endif
#ifdef DPFM_TRACE
    std::unique_ptr<VerilatedFstC> trace;
#endif

    void half(int clk) {
        top->clk = clk;
        top->eval();
#ifdef DPFM_TRACE
        if (trace) trace->dump(ctx->time());
#endif
        ctx->timeInc(1);
    }
    // Low half: settle inputs, leave combinational outputs readable.
    void settle() {
#ifdef DPFM_RUN_MODE
        mem.drive(top.get(), cycles);
        half(0);
        mem.sample(top.get(), cycles);
#else
        half(0);
#endif
    }
    // High half: the rising edge.
    void edge() {
        half(1);
        ++cycles;
    }
    void tick() {
        settle();
        edge();
    }
};

extern "C" {

DPFM_API int dpfm_trace_supported() {
#ifdef DPFM_TRACE
    return 1;
#else
    return 0;
#endif
}

// trace_path: an FST file to write (NULL: no trace; ignored when built without tracing).
DPFM_API Harness* dpfm_create(const char* trace_path) {
    Harness* h = new Harness;
    h->ctx.reset(new VerilatedContext);
    h->ctx->debug(0);
    h->ctx->randReset(0);
#ifdef DPFM_TRACE
    if (trace_path && trace_path[0]) h->ctx->traceEverOn(true);
#endif
    h->top.reset(new Vdpfm_engine{h->ctx.get(), "dpfm_engine"});
#ifdef DPFM_TRACE
    if (trace_path && trace_path[0]) {
        h->trace.reset(new VerilatedFstC);
        h->top->trace(h->trace.get(), 99);
        h->trace->open(trace_path);
    }
#else
    (void)trace_path;
#endif
    auto* t = h->top.get();
    t->clk = 0;
    t->rst = 0;
    t->AXI(awvalid) = 0;
    t->AXI(wvalid) = 0;
    t->AXI(bready) = 0;
    t->AXI(arvalid) = 0;
    t->AXI(rready) = 0;
    t->AXI(awprot) = 0;
    t->AXI(arprot) = 0;
    t->AXI(wstrb) = 0xF;
#ifdef DPFM_RUN_MODE
    t->MAXI(arready) = 0;
    t->MAXI(awready) = 0;
    t->MAXI(wready) = 0;
    t->MAXI(rvalid) = 0;
    t->MAXI(bvalid) = 0;
#endif
    t->eval();
    return h;
}

DPFM_API void dpfm_destroy(Harness* h) {
    if (!h) return;
    h->top->final();
#ifdef DPFM_TRACE
    if (h->trace) h->trace->close();
#endif
    delete h;
}

DPFM_API uint64_t dpfm_cycles(Harness* h) { return h->cycles; }

DPFM_API uint64_t dpfm_bus_accesses(Harness* h) { return h->accesses; }

DPFM_API int dpfm_run_mode_supported() {
#ifdef DPFM_RUN_MODE
    return 1;
#else
    return 0;
#endif
}

// Attach the host's buffer (nwords 32-bit words, seen at bus address base) as the memory
// behind the engine's AXI4 master; words NULL detaches it.  Returns 0, or -1 without run mode.
DPFM_API int dpfm_mem_attach(Harness* h, uint32_t* words, uint64_t nwords, uint64_t base) {
#ifdef DPFM_RUN_MODE
    h->mem.words = words;
    h->mem.nwords = words ? nwords : 0;
    h->mem.base = base;
    return 0;
#else
    (void)h; (void)words; (void)nwords; (void)base;
    return -1;
#endif
}

// The memory's behaviour: read and write-response latency (cycles), the chance in percent
// that a channel is not ready or not valid in a cycle, the chance per million cycles of a
// stall of long_cycles on every channel, and the seed of its random generator.
DPFM_API int dpfm_mem_config(Harness* h, uint32_t latency, uint32_t stall_pct, uint32_t long_ppm,
                             uint32_t long_cycles, uint64_t seed) {
#ifdef DPFM_RUN_MODE
    h->mem.latency = latency;
    h->mem.stall_pct = stall_pct > 99 ? 99 : stall_pct;
    h->mem.long_ppm = long_ppm;
    h->mem.long_cycles = long_cycles;
    h->mem.rng = seed ? seed : 0x9E3779B97F4A7C15ull;
    return 0;
#else
    (void)h; (void)latency; (void)stall_pct; (void)long_ppm; (void)long_cycles; (void)seed;
    return -1;
#endif
}

// Accesses to bus addresses [lo, hi) answer SLVERR (a slave that refuses them); lo == hi: none.
DPFM_API int dpfm_mem_slverr(Harness* h, uint64_t lo, uint64_t hi) {
#ifdef DPFM_RUN_MODE
    h->mem.slverr_lo = lo;
    h->mem.slverr_hi = hi;
    return 0;
#else
    (void)h; (void)lo; (void)hi;
    return -1;
#endif
}

// Bursts the memory has answered: reads (all beats out) and writes (all beats in).
DPFM_API void dpfm_mem_counts(Harness* h, uint64_t* reads, uint64_t* writes) {
#ifdef DPFM_RUN_MODE
    *reads = h->mem.reads_done;
    *writes = h->mem.writes_done;
#else
    (void)h;
    *reads = *writes = 0;
#endif
}

DPFM_API void dpfm_tick(Harness* h, uint64_t n) {
    for (uint64_t i = 0; i < n; ++i) h->tick();
}

DPFM_API void dpfm_reset(Harness* h, uint32_t cycles) {
    auto* t = h->top.get();
    t->AXI(awvalid) = 0;
    t->AXI(wvalid) = 0;
    t->AXI(arvalid) = 0;
    t->AXI(bready) = 0;
    t->AXI(rready) = 0;
    t->rst = 1;
#ifdef DPFM_RUN_MODE
    h->mem.clear();
#endif
    for (uint32_t i = 0; i < (cycles ? cycles : 1); ++i) h->tick();
    t->rst = 0;
    h->tick();
    h->tick();  // the model's top registers rst: the engine sees it one cycle later
}

// One write with all byte lanes enabled.  Returns the BRESP code or DPFM_TIMEOUT.
DPFM_API int dpfm_axil_write(Harness* h, uint32_t addr, uint32_t data) {
    auto* t = h->top.get();
    ++h->accesses;
    t->AXI(awaddr) = addr;
    t->AXI(awvalid) = 1;
    t->AXI(wdata) = data;
    t->AXI(wstrb) = 0xF;
    t->AXI(wvalid) = 1;
    t->AXI(bready) = 1;
    for (uint64_t i = 0; i < DPFM_BUS_TIMEOUT; ++i) {
        h->settle();
        const bool aw = t->AXI(awvalid) && t->AXI(awready);
        const bool w = t->AXI(wvalid) && t->AXI(wready);
        const bool b = t->AXI(bvalid);
        const int resp = t->AXI(bresp);
        h->edge();
        if (aw) t->AXI(awvalid) = 0;
        if (w) t->AXI(wvalid) = 0;
        if (b) {
            t->AXI(bready) = 0;
            return resp;
        }
    }
    t->AXI(awvalid) = 0;
    t->AXI(wvalid) = 0;
    t->AXI(bready) = 0;
    return DPFM_TIMEOUT;
}

// One read.  Stores RDATA in *data; returns the RRESP code or DPFM_TIMEOUT.
DPFM_API int dpfm_axil_read(Harness* h, uint32_t addr, uint32_t* data) {
    auto* t = h->top.get();
    ++h->accesses;
    t->AXI(araddr) = addr;
    t->AXI(arvalid) = 1;
    t->AXI(rready) = 1;
    for (uint64_t i = 0; i < DPFM_BUS_TIMEOUT; ++i) {
        h->settle();
        const bool ar = t->AXI(arvalid) && t->AXI(arready);
        const bool r = t->AXI(rvalid);
        const uint32_t value = t->AXI(rdata);
        const int resp = t->AXI(rresp);
        h->edge();
        if (ar) t->AXI(arvalid) = 0;
        if (r) {
            t->AXI(rready) = 0;
            *data = value;
            return resp;
        }
    }
    t->AXI(arvalid) = 0;
    t->AXI(rready) = 0;
    return DPFM_TIMEOUT;
}

// n writes in order; stops at the first response that is not OKAY and returns it, with its
// position in *failed (-1 when all answered OKAY).
DPFM_API int dpfm_axil_write_many(Harness* h, const uint32_t* addr, const uint32_t* data, int n, int* failed) {
    *failed = -1;
    for (int i = 0; i < n; ++i) {
        const int resp = dpfm_axil_write(h, addr[i], data[i]);
        if (resp != 0) {
            *failed = i;
            return resp;
        }
    }
    return 0;
}

// n reads in order; same convention as dpfm_axil_write_many.
DPFM_API int dpfm_axil_read_many(Harness* h, const uint32_t* addr, uint32_t* data, int n, int* failed) {
    *failed = -1;
    for (int i = 0; i < n; ++i) {
        const int resp = dpfm_axil_read(h, addr[i], &data[i]);
        if (resp != 0) {
            *failed = i;
            return resp;
        }
    }
    return 0;
}

// Reads the STATUS register at status_addr over the bus until its busy bits (busy_mask) are
// clear and, unless ready_mask is 0, one of the ready_mask bits is set (e.g. done, or an
// error code), for at most max_cycles cycles.  Stores the last STATUS in *status.  Returns
// the cycles spent (>= 0), DPFM_TIMEOUT (-1) on a timeout, or -2 - resp when a read answered
// with an error response.
DPFM_API int64_t dpfm_run_until_idle(Harness* h, uint32_t status_addr, uint32_t busy_mask, uint32_t ready_mask,
                            uint64_t max_cycles, uint32_t* status) {
    const uint64_t start = h->cycles;
    for (;;) {
        uint32_t value = 0;
        const int resp = dpfm_axil_read(h, status_addr, &value);
        *status = value;
        if (resp == DPFM_TIMEOUT) return DPFM_TIMEOUT;
        if (resp != 0) return -2 - resp;
        if (!(value & busy_mask) && (ready_mask == 0 || (value & ready_mask)))
            return (int64_t)(h->cycles - start);
        if (h->cycles - start > max_cycles) return DPFM_TIMEOUT;
    }
}

// Writes ctrl_value to ctrl_addr (a start), then waits as dpfm_run_until_idle.  A refused
// CTRL write returns -2 - resp.
DPFM_API int64_t dpfm_start_and_wait(Harness* h, uint32_t ctrl_addr, uint32_t ctrl_value, uint32_t status_addr,
                            uint32_t busy_mask, uint32_t ready_mask, uint64_t max_cycles,
                            uint32_t* status) {
    const int resp = dpfm_axil_write(h, ctrl_addr, ctrl_value);
    if (resp == DPFM_TIMEOUT) return DPFM_TIMEOUT;
    if (resp != 0) return -2 - resp;
    return dpfm_run_until_idle(h, status_addr, busy_mask, ready_mask, max_cycles, status);
}

}  // extern "C"
