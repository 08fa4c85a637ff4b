"""Which SQL functions make a result uncacheable.

sqlglot turns the functions it knows into typed nodes (``now()`` becomes
``exp.CurrentTimestamp``, ``random()`` ``exp.Rand``) and everything else into
``exp.Anonymous``. A typed node is deterministic unless listed in
:data:`VOLATILE_CLASSES`; an anonymous one is accepted only when it is a
database built-in listed in :data:`BUILTIN_DETERMINISTIC`, because otherwise it
may be a user-defined function that reads other tables or is volatile.
"""

from __future__ import annotations

from typing import Final

from sqlglot import exp


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# typed sqlglot nodes that are volatile, session-dependent or time-dependent,
# with every name the node answers to (the first one is used in reasons)
VOLATILE_CLASSES: Final[dict[type[exp.Expr], tuple[str, ...]]] = {
    exp.CurrentTimestamp: ("current_timestamp", "now", "getdate"),
    exp.CurrentDate: ("current_date", "curdate"),
    exp.CurrentTime: ("current_time", "curtime"),
    exp.CurrentDatetime: ("current_datetime",),
    exp.CurrentTimestampLTZ: ("current_timestamp",),
    exp.Localtime: ("localtime",),
    exp.Localtimestamp: ("localtimestamp",),
    exp.Systimestamp: ("systimestamp", "sysdate"),
    exp.UtcTimestamp: ("utc_timestamp",),
    exp.UtcDate: ("utc_date",),
    exp.UtcTime: ("utc_time",),
    exp.Rand: ("random", "rand"),
    exp.Randn: ("randn",),
    exp.Randstr: ("randstr",),
    exp.Uuid: ("uuid", "gen_random_uuid"),
    exp.CurrentUser: ("current_user", "user"),
    exp.SessionUser: ("session_user",),
    exp.CurrentRole: ("current_role",),
    exp.CurrentSchema: ("current_schema", "database", "schema"),
    exp.CurrentSchemas: ("current_schemas",),
    exp.CurrentDatabase: ("current_database",),
    exp.CurrentCatalog: ("current_catalog",),
    exp.CurrentVersion: ("version",),
    exp.NextValueFor: ("nextval",),
}

# anonymous (unknown to sqlglot) names that are volatile or have side effects
VOLATILE_NAMES: Final = _words(
    """
    now clock_timestamp statement_timestamp transaction_timestamp timeofday random
    random_normal setseed gen_random_uuid uuidv4 uuidv7 nextval currval setval lastval
    txid_current txid_current_if_assigned txid_current_snapshot pg_current_xact_id
    pg_current_xact_id_if_assigned pg_current_snapshot pg_sleep pg_sleep_for
    pg_sleep_until set_config current_setting current_user session_user current_role
    current_schema current_schemas current_database current_catalog current_query
    inet_client_addr inet_client_port inet_server_addr inet_server_port pg_backend_pid
    pg_postmaster_start_time pg_conf_load_time pg_notify pg_cancel_backend
    pg_terminate_backend pg_reload_conf pg_rotate_logfile pg_switch_wal pg_read_file
    pg_read_binary_file pg_ls_dir pg_stat_file lo_import lo_export dblink dblink_exec
    version pg_trigger_depth pg_is_in_recovery pg_last_wal_receive_lsn
    pg_current_wal_lsn pg_jit_available has_table_privilege has_column_privilege
    has_schema_privilege has_database_privilege has_function_privilege pg_has_role
    pg_table_size pg_relation_size pg_total_relation_size pg_database_size
    pg_indexes_size pg_size_pretty randomblob changes total_changes last_insert_rowid
    sqlite_version sqlite_source_id load_extension sqlite_offset rand uuid uuid_short
    sysdate connection_id last_insert_id found_rows row_count get_lock release_lock
    release_all_locks is_free_lock is_used_lock sleep benchmark user system_user
    database schema master_pos_wait source_pos_wait utc_timestamp utc_date utc_time
    curdate curtime current_timestamp current_date current_time localtime localtimestamp
    getdate ps_current_thread_id icu_version get_format_now
    to_regclass to_regproc to_regprocedure to_regoper to_regoperator to_regtype
    to_regtypemod to_regnamespace to_regrole to_regcollation to_regconfig
    to_regdictionary regclass regproc regprocedure regoper regoperator regtype
    regnamespace regrole regcollation regconfig regdictionary
    """
)

VOLATILE_PREFIXES: Final = ("uuid_generate_", "pg_advisory_", "pg_try_advisory_", "lo_")

# functions that change session state when called
SESSION_FUNCTIONS: Final = frozenset({"set_config", "setseed"})

# deterministic built-ins sqlglot leaves anonymous in at least one dialect
BUILTIN_DETERMINISTIC: Final = _words(
    """
    abs coalesce nullif greatest least lower upper length substr substring trim ltrim
    rtrim replace round sign mod floor ceil ceiling power pow sqrt exp ln log log10 log2
    pi sin cos tan asin acos atan atan2 degrees radians trunc truncate concat concat_ws
    char_length character_length octet_length bit_length position left right lpad rpad
    reverse repeat ascii chr char md5 sha1 sha2 sha256 sha512 hex unhex format values
    count sum avg min max row_number rank dense_rank percent_rank cume_dist ntile lag
    lead first_value last_value nth_value stddev stddev_pop stddev_samp variance var_pop
    var_samp extract date_part date_trunc to_char to_date to_number to_timestamp cast
    convert if iif ifnull nvl isnull array_agg array_append array_cat array_dims
    array_fill array_length array_lower array_upper array_ndims array_position
    array_positions array_prepend array_remove array_replace array_to_string
    array_to_json string_to_array cardinality unnest generate_series generate_subscripts
    btrim initcap split_part strpos starts_with translate quote_ident quote_literal
    quote_nullable regexp_match regexp_matches regexp_replace regexp_split_to_array
    regexp_split_to_table regexp_count regexp_instr regexp_like regexp_substr encode
    decode to_hex gcd lcm div cbrt width_bucket make_date make_time make_timestamp
    make_timestamptz make_interval justify_days justify_hours justify_interval isfinite
    date_bin to_json to_jsonb row_to_json json_agg jsonb_agg json_object_agg
    jsonb_object_agg json_build_object jsonb_build_object json_build_array
    jsonb_build_array json_array_elements jsonb_array_elements json_array_elements_text
    jsonb_array_elements_text json_array_length jsonb_array_length json_each jsonb_each
    json_each_text jsonb_each_text json_extract_path jsonb_extract_path
    json_extract_path_text jsonb_extract_path_text json_object_keys jsonb_object_keys
    json_populate_record jsonb_populate_record json_populate_recordset
    jsonb_populate_recordset json_to_record jsonb_to_record json_to_recordset
    jsonb_to_recordset json_strip_nulls jsonb_strip_nulls json_typeof jsonb_typeof
    jsonb_set jsonb_insert jsonb_pretty jsonb_path_query jsonb_path_query_array
    jsonb_path_query_first jsonb_path_exists jsonb_path_match to_tsvector to_tsquery
    plainto_tsquery phraseto_tsquery websearch_to_tsquery ts_rank ts_rank_cd ts_headline
    setweight string_agg bool_and bool_or every bit_and bit_or percentile_cont
    percentile_disc mode corr covar_pop covar_samp regr_slope regr_intercept
    num_nonnulls num_nulls isempty lower_inc upper_inc lower_inf upper_inf range_merge
    int4range int8range numrange tsrange tstzrange daterange host masklen network family
    xmlagg array unistr normalize overlay parse_ident crc32 uuid_extract_version
    uuid_extract_timestamp date time datetime julianday unixepoch strftime timediff glob
    like likelihood likely unlikely instr printf quote typeof unicode zeroblob soundex
    total group_concat json json_array json_error_position json_extract json_insert
    json_object json_patch json_remove json_replace json_set json_type json_valid
    json_quote json_group_array json_group_object json_tree jsonb jsonb_array
    jsonb_extract jsonb_insert jsonb_object jsonb_patch jsonb_remove jsonb_replace
    jsonb_set jsonb_group_array jsonb_group_object median octet_length
    sqlite_compileoption_used date_format str_to_date from_unixtime unix_timestamp
    date_add date_sub adddate subdate datediff timestampdiff timestampadd dayofweek
    dayofmonth dayofyear weekday week yearweek monthname dayname last_day makedate
    maketime sec_to_time time_to_sec to_days from_days to_seconds time_format convert_tz
    period_add period_diff field find_in_set locate elt make_set export_set lcase ucase
    mid space strcmp substring_index insert bin oct conv inet_aton inet_ntoa inet6_aton
    inet6_ntoa json_contains json_contains_path json_unquote json_keys json_search
    json_length json_depth json_merge_patch json_merge_preserve json_arrayagg
    json_objectagg json_overlaps json_value json_table bit_count any_value group_concat
    weight_string match year month day hour minute second quarter microsecond
    """
)

NOW_WORDS: Final = frozenset({"now", "today", "tomorrow", "yesterday"})

# SQLite date functions that mean "now" when given no time-value argument
SQLITE_DATE_FUNCTIONS: Final = frozenset(
    {"date", "time", "datetime", "julianday", "unixepoch", "strftime", "timediff"}
)
