"""The suite functions ``try_date`` and ``try_timestamp`` as stored PL/pgSQL functions.

PostgreSQL has no common subexpressions: inline (``monitor.warehouse.postgres``), a
suite query names each value in every branch and field of the parse, and the server
trims, splits and casts it again for each mention. The claims contract's date checks
were most of the gate there (1M claims: 33 s of 83 s). As functions each value is
computed once, with the inline SQL's results: year 0 is 1 BC and a run of whitespace
between date and time reads as one space, as DuckDB's try_strptime reads them.

They live in the schema ``dq_monitor``, created on first use by whichever process
validates first (under an advisory lock). The name carries a version: a changed body
gets a new name, so a process running older code keeps its own.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

log = logging.getLogger(__name__)

SCHEMA = "dq_monitor"
VERSION = "v1"
NAMES = {"try_date": f"{SCHEMA}.try_date_{VERSION}",
         "try_timestamp": f"{SCHEMA}.try_timestamp_{VERSION}"}

# the calendar check of both: NULL for month 13, 30 February; year 0 as DuckDB's 1 BC
_CALENDAR = """
    if m < 1 or m > 12 or d < 1 or d > 31 then
        return null;
    end if;
    candidate := make_date(case when y = 0 then -1 else y end, m, 1) + (d - 1);
    if extract(month from candidate) <> m then
        return null;
    end if;"""

_DDL = f"""
create schema if not exists {SCHEMA};

create or replace function {NAMES["try_date"]}(value text)
returns date language plpgsql immutable strict parallel safe as $fn$
declare
    v text := trim(value);
    parts text[];
    y integer;
    m integer;
    d integer;
    candidate date;
begin
    if v ~ '^[0-9]{{1,4}}-[0-9]{{1,2}}-[0-9]{{1,2}}$' then
        parts := string_to_array(v, '-');
        y := parts[1]; m := parts[2]; d := parts[3];
    elsif v ~ '^[0-9]{{1,2}}/[0-9]{{1,2}}/[0-9]{{1,4}}$' then
        parts := string_to_array(v, '/');
        y := parts[3]; m := parts[1]; d := parts[2];
    elsif v ~ '^[0-9]{{8}}$' then
        y := substr(v, 1, 4); m := substr(v, 5, 2); d := substr(v, 7, 2);
    elsif v ~* '^[0-9]{{1,2}}-(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)-[0-9]{{1,4}}$' then
        parts := string_to_array(v, '-');
        y := parts[3]; d := parts[1];
        m := (strpos('janfebmaraprmayjunjulaugsepoctnovdec', lower(parts[2])) + 2) / 3;
    else
        return null;
    end if;{_CALENDAR}
    return candidate;
end
$fn$;

create or replace function {NAMES["try_timestamp"]}(value text)
returns timestamp language plpgsql immutable strict parallel safe as $fn$
declare
    v text := trim(value);
    spaced text;
    day text[];
    clock text[];
    y integer;
    m integer;
    d integer;
    candidate date;
begin
    if v !~ ('^[0-9]{{1,4}}-[0-9]{{1,2}}-[0-9]{{1,2}}'
             '([[:space:]]+[0-9]{{1,2}}:[0-9]{{1,2}}:[0-9]{{1,2}}'
             '|T[0-9]{{1,2}}:[0-9]{{1,2}}:[0-9]{{1,2}}Z)$') then
        return null;
    end if;
    spaced := regexp_replace(rtrim(translate(v, 'T', ' '), 'Z'), '[[:space:]]+', ' ');
    day := string_to_array(split_part(spaced, ' ', 1), '-');
    clock := string_to_array(split_part(spaced, ' ', 2), ':');
    if clock[1]::integer >= 24 or clock[2]::integer >= 60 or clock[3]::integer >= 60 then
        return null;
    end if;
    y := day[1]; m := day[2]; d := day[3];{_CALENDAR}
    return candidate + make_interval(
        hours => clock[1]::integer, mins => clock[2]::integer, secs => clock[3]::integer);
end
$fn$;
"""


def prepare(engine: sa.Engine) -> bool:
    """Create the functions in ``engine``'s database unless they exist; False (and a
    warning: the suites then run the inline SQL) where that is refused, e.g. a role
    without CREATE on the database or a read-only server."""
    probe = sa.text("select to_regprocedure(:f)")
    signature = {"f": f"{NAMES['try_timestamp']}(text)"}
    try:
        with engine.connect() as conn:
            if conn.execute(probe, signature).scalar() is None:
                conn.execute(sa.text("select pg_advisory_xact_lock(hashtextextended(:n, 0))"),
                             {"n": f"{SCHEMA} functions"})
                if conn.execute(probe, signature).scalar() is None:  # not made meanwhile
                    conn.exec_driver_sql(_DDL)
                conn.commit()
    except sa.exc.DBAPIError as exc:
        log.warning("suite functions stay inline SQL (could not create %s's: %s)",
                    SCHEMA, str(exc.orig).strip())
        return False
    return True
