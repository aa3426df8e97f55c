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

#include <cstdint>
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

struct Harness {
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<Vdpfm_engine> top;
    uint64_t cycles = 0;
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
    void settle() { half(0); }
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
    for (uint32_t i = 0; i < (cycles ? cycles : 1); ++i) h->tick();
    t->rst = 0;
    h->tick();
    h->tick();  // the model's top registers rst: the engine sees it one cycle later
}

// One write with all byte lanes enabled.  Returns the BRESP code or DPFM_TIMEOUT.
DPFM_API int dpfm_axil_write(Harness* h, uint32_t addr, uint32_t data) {
    auto* t = h->top.get();
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
