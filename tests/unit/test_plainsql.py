"""Pure functions of the restore's fidelity rules: which roles a statement names, which DDL
makes a parallel load unsafe, list-valued settings, database privileges, load errors.
(The real round trips against PostgreSQL's own serial load are in tests/fidelity/.)"""
from __future__ import annotations

import pytest

from bigskies_ops.pg.access import pgsql
from bigskies_ops.archives.plainsql import MissingRolesError, OwnerAclFilter, RolePolicy, StatementFacts, statement_roles
from bigskies_ops.pg.admin import acl_items, set_config_sql, split_guc_list
from bigskies_ops.pg.loadcheck import explain_load_error


@pytest.mark.parametrize("stmt, kind, roles", [
    (b'ALTER TABLE public.t OWNER TO "Some One";', "owner", ["Some One"]),
    (b"ALTER LARGE OBJECT 16401 OWNER TO lo_owner;", "owner", ["lo_owner"]),
    (b"GRANT SELECT(a) ON TABLE public.t TO ro;", "acl", ["ro"]),
    (b'GRANT ALL ON SCHEMA "x TO y" TO app WITH GRANT OPTION;', "acl", ["app"]),
    (b"REVOKE ALL ON FUNCTION public.f(a text) FROM PUBLIC;", "acl", []),
    (b"REVOKE EXECUTE ON FUNCTION public.f() FROM fid_reader;", "acl", ["fid_reader"]),
    (b"ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public GRANT SELECT ON TABLES TO ro;",
     "default_acl", ["app", "ro"]),
    (b"SET SESSION AUTHORIZATION 'alice';", "session", ["alice"]),
    (b"RESET SESSION AUTHORIZATION;", None, []),
    (b'CREATE POLICY p ON public.t AS RESTRICTIVE FOR SELECT TO r1, "R 2" USING ((a > 0));', "policy", ["r1", "R 2"]),
    (b"CREATE POLICY p ON public.t USING ((a > 0));", "policy", []),
    (b"CREATE USER MAPPING FOR app SERVER s OPTIONS (user 'x');", "user_mapping", ["app"]),
    (b"ALTER TABLE ONLY public.t ALTER COLUMN id SET DEFAULT nextval('public.s'::regclass);", None, []),
    (b"COMMENT ON TABLE public.t IS 'GRANT ALL ON x TO y';", None, []),
])
def test_statement_roles_names_owners_grantees_and_policy_roles(stmt, kind, roles):
    assert statement_roles(stmt) == (kind, roles)


def test_a_missing_role_is_refused_unless_skipped_and_a_revoke_from_public_always_stays():
    dump = (b"CREATE TABLE public.t (x int);\nALTER TABLE public.t OWNER TO gone;\n"
            b"REVOKE ALL ON TABLE public.t FROM PUBLIC;\nGRANT SELECT ON TABLE public.t TO here;\n")
    strict = OwnerAclFilter(RolePolicy(frozenset({"here"})))
    with pytest.raises(MissingRolesError) as e:
        strict.feed(dump)
    assert e.value.roles == ["gone"] and e.value.exit_code == 3 and "--skip-missing-roles" in str(e.value)
    skip = OwnerAclFilter(RolePolicy(frozenset({"here"}), skip_missing=True))
    out = skip.feed(dump) + skip.flush()
    assert b"OWNER TO gone" not in out and b"FROM PUBLIC" in out and b"TO here" in out
    assert skip.skipped == {"gone": 1}
    # a policy naming a missing role beside an existing one is refused even when skipping
    mixed = OwnerAclFilter(RolePolicy(frozenset({"here"}), skip_missing=True))
    with pytest.raises(MissingRolesError):
        mixed.feed(b"CREATE POLICY p ON public.t TO here, gone USING (true);\n")


DDL = [b"CREATE FUNCTION public.rate(code text) RETURNS numeric LANGUAGE sql STABLE "
       b"AS $$ SELECT r FROM public.rates WHERE c = code $$;",
       b"CREATE TABLE public.p (a integer, k text) PARTITION BY HASH (k);"]


@pytest.mark.parametrize("stmt, load, post", [
    (b"CREATE TABLE public.orders (amount numeric, cur text, "
     b"total numeric GENERATED ALWAYS AS ((amount * public.rate(cur))) STORED);", 1, 0),
    (b"CREATE TABLE public.o2 (cur text, CONSTRAINT c CHECK ((public.rate(cur) > (0)::numeric)));", 1, 0),
    (b"CREATE DOMAIN public.d AS text CONSTRAINT c CHECK ((public.rate(VALUE) > (0)::numeric));", 1, 0),
    (b"ALTER TABLE ONLY public.o3 ALTER COLUMN r SET DEFAULT public.rate('x'::text);", 1, 0),
    (b"CREATE INDEX i ON public.orders USING btree (public.rate(cur));", 0, 1),
    (b"CREATE TRIGGER t AFTER INSERT ON public.p FOR EACH ROW EXECUTE FUNCTION public.rate();", 0, 1),
    # a trigger of an ordinary table fires only on its own rows, all loaded before it exists
    (b"CREATE TRIGGER t BEFORE UPDATE ON public.orders FOR EACH ROW EXECUTE FUNCTION public.rate();", 0, 0),
    # builtins (unqualified) and names that are not functions of the dump
    (b"CREATE TABLE public.x (a numeric(10,2) CHECK ((a > (0)::numeric)), b public.mytype(3), "
     b"c text DEFAULT gen_random_uuid());", 0, 0),
    (b'CREATE TABLE public.y (a text, b numeric GENERATED ALWAYS AS (public."rate"(a)) STORED);', 1, 0),
])
def test_statement_facts_flag_the_dumps_own_functions_where_a_load_evaluates_them(stmt, load, post):
    f = StatementFacts()
    for d in DDL:
        f.feed(d)
    f.feed(stmt)
    assert (len(f.load_hazards), len(f.post_hazards)) == (load, post)


def test_extensions_are_collected():
    f = StatementFacts()
    f.feed(b"CREATE EXTENSION IF NOT EXISTS hstore WITH SCHEMA ext;")
    f.feed(b'CREATE EXTENSION "uuid-ossp" WITH SCHEMA public;')
    assert f.extensions == {"hstore", "uuid-ossp"}


@pytest.mark.parametrize("value, items", [
    ("app, public", ["app", "public"]),
    ('"My Schema", public', ["My Schema", "public"]),
    ('"a""b",c', ['a"b', "c"]),
    ('"$user", public', ["$user", "public"]),
    ("", []),
])
def test_list_settings_split_as_the_server_does(value, items):
    assert split_guc_list(value) == items


def test_a_list_setting_comes_back_element_by_element():
    target = pgsql.SQL("ALTER DATABASE {}").format(pgsql.Identifier("d"))
    assert set_config_sql(target, "search_path=app, public").as_string() == \
        """ALTER DATABASE "d" SET "search_path" TO 'app', 'public'"""
    assert set_config_sql(target, "DateStyle=ISO, MDY").as_string() == \
        """ALTER DATABASE "d" SET "DateStyle" TO 'ISO, MDY'"""
    assert set_config_sql(target, "default_transaction_read_only=on").as_string() == \
        """ALTER DATABASE "d" SET "default_transaction_read_only" TO 'on'"""


def test_database_acl_items():
    assert acl_items(["=Tc/owner", "owner=CTc/owner", '"read only"=c*/owner']) == [
        (None, "TEMPORARY", False), (None, "CONNECT", False), ("owner", "CREATE", False),
        ("owner", "TEMPORARY", False), ("owner", "CONNECT", False), ("read only", "CONNECT", True)]
    assert acl_items(None) == []


def test_load_errors_name_the_extension_and_package_or_the_table_and_function():
    ext = 'ERROR:  extension "postgis" is not available\nDETAIL: Could not open extension control file'
    assert "postgresql-15-postgis-3" in explain_load_error(ext)
    ctl = ('ERROR:  could not open extension control file "/usr/share/postgresql/15/extension/fid_x.control": '
           'No such file or directory')
    assert "'fid_x'" in explain_load_error(ctl)
    fn = ('ERROR:  division by zero\nCONTEXT:  SQL function "ratio" statement 1\n'
          'COPY orders, line 1: "1\t0"')
    why = explain_load_error(fn)
    assert "ratio" in why and "orders" in why
    custom = ('pg_restore: error: COPY failed for table "orders": ERROR:  division by zero\n'
              'CONTEXT:  PL/pgSQL function public.ratio(numeric) line 1 at RETURN')
    why = explain_load_error(custom)
    assert "public.ratio" in why and "orders" in why
    check = 'ERROR:  new row for relation "orders" violates check constraint "positive_rate"'
    assert "positive_rate" in explain_load_error(check) and "orders" in explain_load_error(check)
    assert explain_load_error("ERROR: something else") is None


def test_role_names_are_read_in_the_dumps_own_encoding():
    dump = ("SET client_encoding = 'LATIN1';\nALTER TABLE public.t OWNER TO \"Jos\xe9\";\n").encode("latin-1")
    f = OwnerAclFilter(RolePolicy(frozenset({"José"})))
    f.feed(dump)
    f.flush()
    assert f.roles == {"José"}  # exists: no refusal


@pytest.mark.parametrize("stmt", [
    b"CREATE TABLE public.b_gen (a integer, g integer GENERATED ALWAYS AS ((a OPERATOR(public.##) 0)) STORED);",
    b"CREATE TABLE public.c_gen (v public.e, g integer GENERATED ALWAYS AS ((v)::integer) STORED);",
])
def test_an_operator_or_a_cast_of_the_dump_is_a_call_of_its_function(stmt):
    f = StatementFacts()
    f.feed(b"CREATE FUNCTION public.cnt(a integer, b integer) RETURNS integer LANGUAGE plpgsql IMMUTABLE "
           b"AS $$begin return (select count(*)::int from public.a_ref); end$$;")
    f.feed(b"CREATE OPERATOR public.## (FUNCTION = public.cnt, LEFTARG = integer, RIGHTARG = integer);")
    f.feed(b"CREATE CAST (public.e AS integer) WITH FUNCTION public.cnt_e(public.e);")
    f.feed(stmt)
    assert len(f.load_hazards) == 1


def test_skipping_a_missing_owner_never_hands_a_view_or_a_security_definer_function_to_the_restoring_user():
    dump = (b"CREATE FUNCTION public.whoami() RETURNS text\n    LANGUAGE sql SECURITY DEFINER\n"
            b"    AS $$select current_user::text$$;\n")
    for owner in (b"ALTER FUNCTION public.whoami() OWNER TO app_low;\n", b"ALTER VIEW public.v_docs OWNER TO app_low;\n"):
        f = OwnerAclFilter(RolePolicy(frozenset(), skip_missing=True))
        with pytest.raises(MissingRolesError) as e:
            f.feed(dump + owner)
        assert "app_low" in str(e.value) and "--roles" in str(e.value)
    f = OwnerAclFilter(RolePolicy(frozenset(), skip_missing=True))  # an ordinary function: skipped
    f.feed(b"CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS $$select 1$$;\n"
           b"ALTER FUNCTION public.f() OWNER TO app_low;\n")
    assert f.skipped == {"app_low": 1}


def test_a_utf8_role_name_in_a_latin1_dump_is_read_as_utf8():
    dump = ("SET client_encoding = 'LATIN1';\nALTER TABLE public.t OWNER TO \"Fran\u00e7oise\";\n").encode("utf-8")
    f = OwnerAclFilter()
    f.feed(dump)
    f.flush()
    assert f.roles == {"Fran\u00e7oise"}


PK = b"ALTER TABLE ONLY public.acct\n    ADD CONSTRAINT acct_pkey PRIMARY KEY (id);"
FK = b"ALTER TABLE ONLY public.ledger\n    ADD CONSTRAINT ledger_fk FOREIGN KEY (acct_id) REFERENCES public.acct(id);"


@pytest.mark.parametrize("stmts, hazard", [
    ([PK, b"CREATE UNIQUE INDEX acct_id_uidx ON public.acct USING btree (id);", FK], True),
    # the foreign key before the second candidate (not pg_dump's order, but the same hazard)
    ([PK, FK, b"CREATE UNIQUE INDEX acct_id_uidx ON public.acct USING btree (id);"], True),
    ([PK, b"ALTER TABLE ONLY public.acct ADD CONSTRAINT acct_u UNIQUE NULLS NOT DISTINCT (id) "
          b"USING INDEX TABLESPACE x;", FK], True),
    ([PK, b'CREATE UNIQUE INDEX "Odd ""Name""" ON ONLY public.acct USING btree (id DESC NULLS LAST) '
          b"INCLUDE (v);", FK], True),
    # not candidates: partial, an expression, another column set, deferrable, not unique
    ([PK, b"CREATE UNIQUE INDEX i ON public.acct USING btree (id) WHERE (id > 0);", FK], False),
    ([PK, b"CREATE UNIQUE INDEX i ON public.acct USING btree (abs(id));", FK], False),
    ([PK, b"CREATE UNIQUE INDEX i ON public.acct USING btree (id, v);", FK], False),
    ([PK, b"ALTER TABLE ONLY public.acct ADD CONSTRAINT u UNIQUE (id) DEFERRABLE INITIALLY IMMEDIATE;", FK], False),
    ([PK, b"CREATE INDEX i ON public.acct USING btree (id);", FK], False),
    # another table of the same name in another schema
    ([PK, b"CREATE UNIQUE INDEX i ON other.acct USING btree (id);", FK], False),
    # two-column keys match in any column order; NOT DEFERRABLE still counts
    ([b"ALTER TABLE ONLY public.acct ADD CONSTRAINT k PRIMARY KEY (a, b);",
      b"ALTER TABLE ONLY public.acct ADD CONSTRAINT u UNIQUE (b, a) NOT DEFERRABLE;",
      b"ALTER TABLE public.ledger ADD CONSTRAINT f FOREIGN KEY (x, y) REFERENCES public.acct(b, a) "
      b"ON DELETE CASCADE NOT VALID;"], True),
    ([PK, b"CREATE UNIQUE INDEX acct_id_uidx ON public.acct USING btree (id);"], False),  # no foreign key
])
def test_foreign_keys_with_two_candidate_indexes_are_a_parallel_hazard(stmts, hazard):
    f = StatementFacts()
    for s in stmts:
        f.feed(s)
    assert f.load_hazards == [] and len(f.post_hazards) == int(hazard), f.post_hazards
    if hazard:
        assert f.post_hazards[0].startswith("foreign key public.ledger.")
        assert "pg_restore --jobs may tie it to another one" in f.post_hazards[0]


def test_foreign_key_rule_reads_names_as_postgresql_stores_them():
    """A schema named ``if`` (not reserved: pg_dump leaves it unquoted) is a name, not a
    keyword; names are compared as bytes, so two LATIN1 names are not merged (helper-44)."""
    f = StatementFacts()
    for s in (b"ALTER TABLE ONLY if.acct\n    ADD CONSTRAINT acct_pkey PRIMARY KEY (id);",
              b"CREATE UNIQUE INDEX if ON if.acct USING btree (id);",
              b"ALTER TABLE ONLY public.ledger\n    ADD CONSTRAINT ledger_a_fkey FOREIGN KEY (a) REFERENCES if.acct(id);"):
        f.feed(s)
    assert f.post_hazards == ["foreign key public.ledger.ledger_a_fkey references if.acct (id), covered by 2 unique "
                              "indexes (acct_pkey, if): pg_restore --jobs may tie it to another one"]
    g = StatementFacts()
    for s in (b'ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY ("\xe4");',
              b'ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_o UNIQUE ("\xf6");',
              b'ALTER TABLE ONLY public.c\n    ADD CONSTRAINT c_x_fkey FOREIGN KEY (x) REFERENCES public.t("\xe4");'):
        g.feed(s)
    assert g.post_hazards == []
