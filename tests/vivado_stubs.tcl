# vivado_stubs.tcl: stand-ins for the Vivado Tcl commands that build.tcl calls, for a plain tclsh.
#
#   cd BUILD_TREE && tclsh vivado_stubs.tcl build.tcl
#
# Defines every Vivado command build.tcl uses, then sources build.tcl the way
# `vivado -mode batch -source build.tcl` does. Every stubbed call, and every `file copy`,
# `file delete` and `exit`, is appended to $STUB_LOG, one call per line: the command and its
# arguments separated by tabs, with backslash, tab and newline written as \\, \t and \n.
# Each property a `set_property` sets adds a line `property OBJECT NAME VALUE` after the call.
# A command the stubs do not define stops the run with an error, so the stubs cover exactly
# what build.tcl calls.
#
# A module reference has the ports of its module and the interfaces its X_INTERFACE_INFO
# attributes name; get_bd_pins and get_bd_intf_pins of any other pin of that cell stop the run.
#
# The stubs play a Vivado whose run succeeds, unless these environment variables say otherwise
# (a variable that is set counts, even when empty):
#   STUB_WNS, STUB_TNS, STUB_WHS, STUB_THS   the run's STATS.* slacks in ns (defaults 0.412,
#                                            0.000, 0.051, 0.000); empty: the run has no value
#   STUB_SETUP_SLACK, STUB_HOLD_SLACK        SLACK of the worst setup/hold timing path (defaults
#                                            0.412, 0.051); empty: no such path
#   STUB_IPDEFS         the versions the IP catalogue has of every IP, in the order get_ipdefs
#                       returns them (default "5.10 5.9"); empty: none
#   STUB_FCLK0_ACT      the FCLK0 the processing system reports after validation, in MHz
#                       (default: the requested PCW_FPGA0_PERIPHERAL_FREQMHZ)
#   STUB_SEGMENTS       how many address segments of the engine assign_bd_address makes
#                       (default 1)
#   STUB_SEGMENT_RANGE  the range the engine's segment reports, whatever was set (default: as set)
#   STUB_MEM_SEGMENTS   how many HP0_DDR_LOWOCM segments assign_bd_address makes in the engine
#                       master's address space (default 1, but none unless the PS7 has
#                       PCW_USE_S_AXI_HP0 1 and a connect_bd_intf_net joined /ps7/S_AXI_HP0
#                       to something, as Vivado maps a slave only when a master reaches it)
#   STUB_MEM_SEGMENT_RANGE  the range that segment reports, whatever was set (default: as set)
#   STUB_BITSTREAMS     how many .bit files impl_1 writes (default 1)

set stub(log) [open $::env(STUB_LOG) a]
set stub(props) [dict create]
set stub(sources) {}
set stub(project) ""
set stub(project_dir) ""
set stub(segments) {}
set stub(intf_nets) {}
set stub(ports) [dict create]

proc stub_env {name default} {
    if {[info exists ::env($name)]} { return $::env($name) }
    return $default
}

proc stub_record {words} {
    set escaped {}
    foreach word $words { lappend escaped [string map [list \\ \\\\ \t \\t \n \\n] $word] }
    puts $::stub(log) [join $escaped \t]
    flush $::stub(log)
}

proc stub_call {args} { stub_record $args }

proc stub_write {path text} {
    stub_real_file mkdir [stub_real_file dirname $path]
    set channel [open $path w]
    puts -nonewline $channel $text
    close $channel
    return $path
}

proc stub_set {object name value} {
    dict set ::stub(props) $object [string toupper $name] $value
    stub_record [list property $object [string toupper $name] $value]
}

# Vivado names block-design objects by absolute paths: ps7 -> /ps7.
proc stub_bd_path {name} { return /[string trimleft $name /] }

# ---- Tcl built-ins that change files or end the run: logged, then done ------------------------
rename file stub_real_file
proc file {subcommand args} {
    if {$subcommand in {copy delete rename mkdir}} { stub_record [list file $subcommand {*}$args] }
    return [stub_real_file $subcommand {*}$args]
}
rename exit stub_real_exit
proc exit {{code 0}} {
    stub_record [list exit $code]
    close $::stub(log)
    stub_real_exit $code
}
rename unknown stub_real_unknown
proc unknown {command args} {
    error "vivado_stubs.tcl: build.tcl calls '$command', which no stub defines"
}

# ---- project --------------------------------------------------------------------------------
proc version {args} { stub_call version {*}$args; return 2024.1 }

proc create_project {args} {
    stub_call create_project {*}$args
    set positional {}
    for {set i 0} {$i < [llength $args]} {incr i} {
        set word [lindex $args $i]
        if {$word eq "-part"} { incr i; continue }
        if {[string match -* $word]} { continue }
        lappend positional $word
    }
    lassign $positional ::stub(project) ::stub(project_dir)
    if {"-force" in $args} { stub_real_file delete -force $::stub(project_dir) }
    stub_real_file mkdir $::stub(project_dir)
    return $::stub(project)
}
proc current_project {args} { stub_call current_project {*}$args; return $::stub(project) }

proc add_files {args} {
    stub_call add_files {*}$args
    foreach path [lindex $args end] {
        if {![stub_real_file exists $path]} { error "add_files: no file $path" }
        lappend ::stub(sources) $path
    }
}
proc update_compile_order {args} { stub_call update_compile_order {*}$args }
proc get_filesets {args} { stub_call get_filesets {*}$args; return [lindex $args end] }

proc set_property {args} {
    stub_call set_property {*}$args
    set args [lsearch -all -inline -not -exact $args -quiet]
    set object [lindex $args end]
    if {[lindex $args 0] eq "-dict"} {
        foreach {name value} [lindex $args 1] { stub_set $object $name $value }
    } else {
        stub_set $object [lindex $args 0] [lindex $args 1]
    }
}

proc get_property {args} {
    stub_call get_property {*}$args
    set args [lsearch -all -inline -not -exact $args -quiet]
    lassign $args name object
    set name [string toupper $name]
    # Vivado's -quiet get_property of no object: nothing.
    if {$object eq ""} { return "" }
    switch -- $name {
        CONFIG.PCW_ACT_FPGA0_PERIPHERAL_FREQMHZ {
            set requested [dict get $::stub(props) $object CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ]
            return [stub_env STUB_FCLK0_ACT [format %.6f $requested]]
        }
        RANGE {
            set set_range [dict get $::stub(props) $object RANGE]
            if {[string match /ps7/Data/* $object]} { return [stub_env STUB_SEGMENT_RANGE $set_range] }
            return [stub_env STUB_MEM_SEGMENT_RANGE $set_range]
        }
        PROGRESS { return 100% }
        STATUS { return "write_bitstream Complete!" }
        DIRECTORY { return [stub_real_file join $::stub(project_dir) $::stub(project).runs $object] }
        STATS.WNS { return [stub_env STUB_WNS 0.412] }
        STATS.TNS { return [stub_env STUB_TNS 0.000] }
        STATS.WHS { return [stub_env STUB_WHS 0.051] }
        STATS.THS { return [stub_env STUB_THS 0.000] }
        SLACK {
            switch -- $object {
                setup_path { return [stub_env STUB_SETUP_SLACK 0.412] }
                hold_path { return [stub_env STUB_HOLD_SLACK 0.051] }
            }
        }
    }
    if {[dict exists $::stub(props) $object $name]} { return [dict get $::stub(props) $object $name] }
    error "get_property: the stubs know no property $name of '$object'"
}

# ---- IP catalogue and block design ----------------------------------------------------------
proc get_ipdefs {args} {
    stub_call get_ipdefs {*}$args
    if {![regexp {^xilinx.com:ip:([^:]+):\*$} [lindex $args end] -> name]} {
        error "get_ipdefs: unexpected pattern [lindex $args end]"
    }
    # By default two versions, in an order where only a dictionary sort finds the newest.
    set defs {}
    foreach version [stub_env STUB_IPDEFS "5.10 5.9"] { lappend defs xilinx.com:ip:$name:$version }
    return $defs
}
proc create_bd_design {args} { stub_call create_bd_design {*}$args; return [lindex $args end] }
proc current_bd_design {args} { stub_call current_bd_design {*}$args; return [lindex $args end] }

proc create_bd_cell {args} {
    stub_call create_bd_cell {*}$args
    set at [lsearch -exact $args -reference]
    if {$at >= 0} {
        # A module reference must name a module of the project's sources.
        set module [lindex $args $at+1]
        set header ""
        foreach path $::stub(sources) {
            set channel [open $path]
            set text [read $channel]
            close $channel
            regexp "(?:^|\n)\\s*module\\s+$module\\s*\\((\[^;\]*)\\);" $text -> header
        }
        if {$header eq ""} { error "create_bd_cell: no module $module in the project's sources" }
        # The cell's pins: the module's ports, and the interfaces X_INTERFACE_INFO names.
        set pins {}
        foreach {-> port} [regexp -all -inline \
                {(?:input|output|inout)\s+(?:wire\s+|reg\s+)?(?:\[[^]]*\]\s*)?(\w+)} $header] {
            lappend pins $port
        }
        set interfaces {}
        foreach {-> bus} [regexp -all -inline \
                {X_INTERFACE_INFO\s*=\s*"xilinx.com:interface:\S+\s+(\w+)\s} $header] {
            if {$bus ni $interfaces} { lappend interfaces $bus }
        }
        dict set ::stub(ports) [stub_bd_path [lindex $args end]] [dict create pins $pins intf $interfaces]
    }
    return [stub_bd_path [lindex $args end]]
}
# A pin of a module reference must be one of its module's ports (kind pins) or interfaces (intf).
proc stub_check_pin {kind path} {
    set path [stub_bd_path $path]
    set cell [stub_real_file dirname $path]
    if {[dict exists $::stub(ports) $cell]} {
        set known [dict get $::stub(ports) $cell $kind]
        if {[stub_real_file tail $path] ni $known} {
            error "no [expr {$kind eq "pins" ? "port" : "interface"}] [stub_real_file tail $path] on module reference $cell (it has: $known)"
        }
    }
    return $path
}
proc create_bd_intf_port {args} { stub_call create_bd_intf_port {*}$args; return [stub_bd_path [lindex $args end]] }
proc get_bd_intf_ports {args} { stub_call get_bd_intf_ports {*}$args; return [stub_bd_path [lindex $args end]] }
proc get_bd_intf_pins {args} { stub_call get_bd_intf_pins {*}$args; return [stub_check_pin intf [lindex $args end]] }
proc get_bd_pins {args} { stub_call get_bd_pins {*}$args; return [stub_check_pin pins [lindex $args end]] }
proc connect_bd_intf_net {args} {
    stub_call connect_bd_intf_net {*}$args
    lappend ::stub(intf_nets) [lrange $args end-1 end]
}
proc connect_bd_net {args} { stub_call connect_bd_net {*}$args }

proc assign_bd_address {args} {
    stub_call assign_bd_address {*}$args
    # Vivado names the segment SEG_<cell>_<the slave's segment>: here the engine's reg0.
    set ::stub(segments) {}
    for {set i 0} {$i < [stub_env STUB_SEGMENTS 1]} {incr i} {
        lappend ::stub(segments) /ps7/Data/SEG_dpfm_reg$i
    }
    # The DDR through HP0, in the address space of the engine master that reaches the port (the
    # master interface that a net joins to the interconnect that a net joins to /ps7/S_AXI_HP0).
    set hp0_on [expr {[dict exists $::stub(props) /ps7 CONFIG.PCW_USE_S_AXI_HP0]
                      && [dict get $::stub(props) /ps7 CONFIG.PCW_USE_S_AXI_HP0] eq "1"}]
    set masters {}
    foreach net $::stub(intf_nets) {
        if {"/ps7/S_AXI_HP0" ni $net} { continue }
        set cell [stub_real_file dirname [lindex [lsearch -all -inline -not -exact $net /ps7/S_AXI_HP0] 0]]
        foreach other $::stub(intf_nets) {
            lassign $other a b
            if {[stub_real_file dirname $b] eq $cell && [string match */S*_AXI $b]} { lappend masters $a }
        }
    }
    if {$hp0_on} {
        foreach master $masters {
            for {set i 0} {$i < [stub_env STUB_MEM_SEGMENTS 1]} {incr i} {
                lappend ::stub(segments) $master/SEG_ps7_HP0_DDR_LOWOCM[expr {$i ? "_$i" : ""}]
            }
        }
    }
}
proc get_bd_addr_segs {args} {
    stub_call get_bd_addr_segs {*}$args
    set pattern [stub_bd_path [lindex $args end]]
    return [lsearch -all -inline -glob $::stub(segments) $pattern]
}
proc validate_bd_design {args} { stub_call validate_bd_design {*}$args }
proc save_bd_design {args} { stub_call save_bd_design {*}$args }

# ---- generated products ---------------------------------------------------------------------
proc stub_bd_dir {} {
    return [stub_real_file join $::stub(project_dir) $::stub(project).gen sources_1 bd system]
}
proc get_files {args} {
    stub_call get_files {*}$args
    set pattern [lindex $args end]
    if {[string match */hw_handoff/* $pattern]} {
        set hwh [stub_real_file join [stub_bd_dir] hw_handoff system.hwh]
        return [expr {[stub_real_file exists $hwh] ? $hwh : ""}]
    }
    return [stub_real_file join $::stub(project_dir) $::stub(project).srcs sources_1 bd system $pattern]
}
proc generate_target {args} {
    stub_call generate_target {*}$args
    stub_write [stub_real_file join [stub_bd_dir] hw_handoff system.hwh] "<EDKSYSTEM stub=\"hwh\"/>\n"
}
proc make_wrapper {args} {
    stub_call make_wrapper {*}$args
    return [stub_write [stub_real_file join [stub_bd_dir] hdl system_wrapper.v] \
        "module system_wrapper(); endmodule\n"]
}

# ---- runs and reports -----------------------------------------------------------------------
proc get_runs {args} { stub_call get_runs {*}$args; return [lindex $args end] }
proc launch_runs {args} {
    stub_call launch_runs {*}$args
    if {[lindex $args 0] eq "impl_1" && "write_bitstream" in $args} {
        set impl [stub_real_file join $::stub(project_dir) $::stub(project).runs impl_1]
        for {set i 0} {$i < [stub_env STUB_BITSTREAMS 1]} {incr i} {
            stub_write [stub_real_file join $impl [expr {$i ? "system_wrapper_$i.bit" : "system_wrapper.bit"}]] \
                "stub bitstream\n"
        }
    }
}
proc wait_on_run {args} { stub_call wait_on_run {*}$args }
proc open_run {args} { stub_call open_run {*}$args }
proc report_timing_summary {args} {
    stub_call report_timing_summary {*}$args
    stub_write [lindex $args end] "stub timing summary\n"
}
proc report_utilization {args} {
    stub_call report_utilization {*}$args
    stub_write [lindex $args end] "stub utilization\n"
}
proc get_timing_paths {args} {
    stub_call get_timing_paths {*}$args
    set kind [expr {"-hold" in $args ? "hold" : "setup"}]
    if {[stub_env STUB_[string toupper $kind]_SLACK x] eq ""} { return "" }
    return ${kind}_path
}

# ---- the run --------------------------------------------------------------------------------
if {$argc != 1} {
    puts stderr "usage: tclsh vivado_stubs.tcl BUILD_TCL"
    stub_real_exit 2
}
source [lindex $argv 0]
# Vivado's batch mode ends with exit code 0 when the script returns.
exit 0
