import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.TreeSet;

/**
 * What JDBC tools (DBeaver, DataGrip, Metabase) do on connect, run by test_real_clients.py through amber's
 * gateway: currentSchema= in the URL, setReadOnly, setTransactionIsolation, setSchema and DatabaseMetaData.
 * Prints one line per step. Arguments: the jdbc URL and the user (the grant id); the token comes in PGPASSWORD.
 */
public class GatewayJdbcClients {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", System.getenv("PGPASSWORD"));
        props.setProperty("sslmode", "require");
        props.setProperty("sslfactory", "org.postgresql.ssl.NonValidatingFactory");
        try (Connection conn = DriverManager.getConnection(args[0], props)) {
            System.out.println("schema " + conn.getSchema());
            conn.setReadOnly(true);
            conn.setAutoCommit(false);
            System.out.println("read-only transaction " + one(conn, "SHOW transaction_read_only") + " "
                + one(conn, "SELECT count(*) FROM orders"));
            conn.commit();
            conn.setTransactionIsolation(Connection.TRANSACTION_SERIALIZABLE);
            System.out.println("isolation " + one(conn, "SHOW transaction_isolation"));
            conn.commit();
            conn.setAutoCommit(true);
            conn.setReadOnly(false);
            conn.setSchema("public");
            System.out.println("setSchema " + conn.getSchema());
            DatabaseMetaData meta = conn.getMetaData();
            List<String> tables = new ArrayList<>();
            try (ResultSet rs = meta.getTables(null, "public", "%", new String[] {"TABLE", "VIEW", "PARTITIONED TABLE"})) {
                while (rs.next()) {
                    tables.add(rs.getString("TABLE_NAME"));
                }
            }
            System.out.println("tables " + String.join(",", new TreeSet<>(tables)));
            List<String> columns = new ArrayList<>();
            try (ResultSet rs = meta.getColumns(null, "public", "orders", "%")) {
                while (rs.next()) {
                    columns.add(rs.getString("COLUMN_NAME"));
                }
            }
            System.out.println("columns orders " + String.join(",", columns));
            try (ResultSet rs = meta.getPrimaryKeys(null, "public", "orders")) {
                rs.next();
                System.out.println("primary key orders " + rs.getString("COLUMN_NAME"));
            }
            boolean hasPublic = false;
            try (ResultSet rs = meta.getSchemas()) {
                while (rs.next()) {
                    hasPublic |= "public".equals(rs.getString("TABLE_SCHEM"));
                }
            }
            System.out.println("schemas " + (hasPublic ? "has public" : "without public"));
            try (ResultSet rs = meta.getImportedKeys(null, "public", "orders")) {
                rs.next();
                System.out.println("imported keys orders " + rs.getString("PKTABLE_NAME") + "." + rs.getString("PKCOLUMN_NAME"));
            }
            TreeSet<String> indexes = new TreeSet<>();
            try (ResultSet rs = meta.getIndexInfo(null, "public", "orders", false, true)) {
                while (rs.next()) {
                    if (rs.getString("INDEX_NAME") != null) {
                        indexes.add(rs.getString("INDEX_NAME"));
                    }
                }
            }
            System.out.println("indexes orders " + String.join(",", indexes));
            System.out.println("done ok");
        } catch (SQLException e) {
            System.out.println("failed " + e.getSQLState() + " " + e.getMessage());
            System.exit(1);
        }
    }

    private static String one(Connection conn, String sql) throws SQLException {
        try (Statement statement = conn.createStatement(); ResultSet rs = statement.executeQuery(sql)) {
            rs.next();
            return rs.getString(1);
        }
    }
}
